"""Picture quality metrics and the Bjontegaard rate difference, for the RD benchmark.

PSNR and MS-SSIM are computed here (RGB, 8 bits). SSIMULACRA2 is the `ssimulacra2` package (a
Python port of libjxl's tool; higher is better, 90 is visually lossless). Butteraugli is libjxl's
`butteraugli_main` (Debian libjxl-devtools; lower is better, max-norm distance), skipped with a note
when the tool is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter

BUTTERAUGLI = shutil.which("butteraugli_main")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term, Gaussian window sigma 1.5, per channel averaged."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda a: gaussian_filter(a, sigma=(1.5, 1.5, 0), truncate=3.5)  # noqa: E731 (11-tap window)
    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x**2
    sigma_yy = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    contrast_structure = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float(np.mean(luminance * contrast_structure)), float(np.mean(contrast_structure))


def ms_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003): five scales, 2x2 average pooling between them."""
    x, y = reference.astype(np.float64), test.astype(np.float64)
    value = 1.0
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        ssim, contrast_structure = _ssim_terms(x, y)
        last = scale == len(MS_SSIM_WEIGHTS) - 1
        value *= max(ssim if last else contrast_structure, 1e-12) ** weight
        height, width = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:height, :width].reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))
        y = y[:height, :width].reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))
    return value


def perceptual(reference: Image.Image, test: Image.Image) -> dict[str, float]:
    """SSIMULACRA2 and butteraugli (NaN when the tool is missing)."""
    from ssimulacra2 import compute_ssimulacra2

    with tempfile.TemporaryDirectory() as folder:
        a, b = Path(folder) / "reference.png", Path(folder) / "test.png"
        reference.save(a)
        test.save(b)
        scores = {"ssimulacra2": float(compute_ssimulacra2(str(a), str(b))), "butteraugli": float("nan")}
        if BUTTERAUGLI:
            result = subprocess.run([BUTTERAUGLI, str(a), str(b)], capture_output=True, text=True, timeout=120)
            match = re.match(r"\s*([0-9.]+)", result.stdout)
            if result.returncode == 0 and match:
                scores["butteraugli"] = float(match.group(1))
    return scores


def all_metrics(reference: Image.Image, test: Image.Image, with_perceptual: bool = True) -> dict[str, float]:
    a, b = np.asarray(reference), np.asarray(test)
    scores = {"psnr": psnr(a, b), "ms_ssim": ms_ssim(a, b)}
    if with_perceptual:
        scores.update(perceptual(reference, test))
    return scores


def bd_rate(rate_a, quality_a, rate_b, quality_b) -> float:
    """Bjontegaard delta rate of B against A, in percent (negative: B needs fewer bits for the same
    quality), with monotone piecewise-cubic interpolation of log-rate over the common quality range.
    Quality must grow with rate (pass -butteraugli, not butteraugli). NaN without overlap."""
    curves = []
    for rate, quality in ((rate_a, quality_a), (rate_b, quality_b)):
        rate, quality = np.asarray(rate, float), np.asarray(quality, float)
        keep = np.isfinite(rate) & np.isfinite(quality) & (rate > 0)
        order = np.argsort(quality[keep])
        quality, log_rate = quality[keep][order], np.log(rate[keep][order])
        unique = np.concatenate([[True], np.diff(quality) > 1e-9])
        if unique.sum() < 2:
            return float("nan")
        curves.append((quality[unique], np.maximum.accumulate(log_rate[unique])))
    low = max(curves[0][0][0], curves[1][0][0])
    high = min(curves[0][0][-1], curves[1][0][-1])
    if not high > low:
        return float("nan")
    integrals = [PchipInterpolator(q, r).integrate(low, high) for q, r in curves]
    return float((np.exp((integrals[1] - integrals[0]) / (high - low)) - 1) * 100)
