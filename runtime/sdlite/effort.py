"""Encoder effort: search for the latent whose quantized version decodes closest to the picture.

The encoder network guesses a latent in one pass. From that guess, Adam descends on
distortion + rate_weight * rate through the decoder's gradient graph (decoder_vjp.onnx, run by
onnxruntime), with straight-through rounding: the loss is that of the quantized latent, its gradient
moves the continuous one. The file format does not change: the decoder sees ordinary levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import SdliteError
from .methods.base import EffortSearch, Quantize
from .networks.inference import Graph
from .networks.runner import Networks
from .networks.tiling import Tiling, cut

# Optimisation steps for each effort level; 0 is the encoder's single pass. A step costs about four
# decodes; measured on Kodak crops (TAEF2, predictive method), 4 steps gave -31% BD-rate, 8 -39% and
# 16 -49%, so the gain per step falls off quickly past a dozen.
EFFORT_STEPS = (0, 2, 4, 6, 9, 12)
MAX_EFFORT = len(EFFORT_STEPS) - 1
# Adam's step, in latent units (the export scales latents to about unit variance): fixed, not tied to
# the quantizer's step, because the straight-through gradient grows less reliable as steps coarsen.
LEARNING_RATE = 0.05
BETAS = (0.9, 0.999)
# The rate weight is the slope of the rate-distortion curve at the starting point, taken as
# distortion ~ 1/bpp^k there; k = 1 keeps files between 10% smaller than effort 0's and the same size
# (TAEF2, Kodak crops, qualities 20-50), where k = 1.5 already shrinks them by up to 18%.
RATE_SLOPE = 1.0
SMOOTHING = 0.5  # pseudo-count of every level, as an adaptive model starts with a count for each

Progress = Callable[[int, int], None]
CodedBytes = Callable[[np.ndarray, int, int], int]  # (variable, width, height) -> the size of its file


def steps_for_effort(effort: int) -> int:
    if not 0 <= effort <= MAX_EFFORT:
        raise SdliteError(f"effort must be between 0 and {MAX_EFFORT}, got {effort}")
    return EFFORT_STEPS[effort]


def histogram_rate(levels: np.ndarray) -> tuple[float, np.ndarray]:
    """Bits of `levels` (channels, height, width) under each channel's own level histogram, and the
    change in bits per level step of each element, by central difference of the code lengths."""
    bits = 0.0
    slope = np.empty(levels.shape, dtype=np.float32)
    for channel, plane in enumerate(levels):
        lowest = int(plane.min()) - 1  # one level beyond each end, so the slope at the edges points inwards
        counts = np.bincount((plane - lowest).ravel(), minlength=int(plane.max()) - lowest + 2) + SMOOTHING
        code_lengths = -np.log2(counts / counts.sum())
        index = plane - lowest
        bits += float(code_lengths[index].sum())
        slope[channel] = (code_lengths[index + 1] - code_lengths[index - 1]) / 2
    return bits, slope


@dataclass
class SearchResult:
    latent: np.ndarray  # the best latent found: quantized by the same method, it gives the best levels
    distortion: float  # its mean squared error
    start_distortion: float  # the encoder's own latent's, effort 0
    rate_weight: float  # distortion (MSE) per bit per pixel, as weighed in the search


class LatentSearch:
    """Adam on the latent through the decoder's gradient graph, at fixed quantizer steps.

    `quantize` is the coding method's quantizer: latent -> (the reconstruction the decoder will see, the
    levels coded); `steps` its step for each channel, which turns the rate's slope per level into one
    per latent unit.
    """

    def __init__(self, gradient: Graph, target: np.ndarray, quantize: Quantize, steps: np.ndarray, pixels: int):
        self.gradient = gradient
        self.target = target  # the padded picture, NCHW in [0, 1]
        self.quantize = quantize
        self.steps = np.asarray(steps, dtype=np.float32).reshape(-1, 1, 1)
        self.pixels = pixels

    def objective(self, latent: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """Distortion and estimated bits of the quantized latent, and their gradients (straight through
        the quantizer) with respect to the latent."""
        reconstruction, levels = self.quantize(latent)
        image, distortion_gradient = self.gradient(reconstruction[None], self.target)
        distortion = float(np.mean((image - self.target) ** 2, dtype=np.float64))
        bits, bits_per_level = histogram_rate(levels)
        return distortion, bits, distortion_gradient[0], bits_per_level / self.steps

    def run(self, latent: np.ndarray, steps: int, progress: Progress | None = None) -> SearchResult:
        variable = latent.astype(np.float32).copy()
        distortion, bits, distortion_gradient, rate_gradient = self.objective(variable)
        bpp = max(bits / self.pixels, 1e-6)
        rate_weight = RATE_SLOPE * distortion / bpp
        start_distortion = distortion
        best, best_distortion, best_loss = variable.copy(), distortion, distortion + rate_weight * bpp
        first_moment = np.zeros_like(variable)
        second_moment = np.zeros_like(variable)
        for iteration in range(1, steps + 1):
            gradient = distortion_gradient + rate_weight / self.pixels * rate_gradient
            first_moment = BETAS[0] * first_moment + (1 - BETAS[0]) * gradient
            second_moment = BETAS[1] * second_moment + (1 - BETAS[1]) * gradient**2
            corrected_first = first_moment / (1 - BETAS[0] ** iteration)
            corrected_second = second_moment / (1 - BETAS[1] ** iteration)
            # Decay to zero so that the last steps settle on a quantized point instead of jumping around it.
            decay = 1.0 - (iteration - 1) / steps
            variable -= decay * LEARNING_RATE * corrected_first / (np.sqrt(corrected_second) + 1e-12)
            distortion, bits, distortion_gradient, rate_gradient = self.objective(variable)
            loss = distortion + rate_weight * bits / self.pixels
            if loss < best_loss:
                best, best_distortion, best_loss = variable.copy(), distortion, loss
            if progress is not None:
                progress(iteration, steps)
        return SearchResult(best, best_distortion, start_distortion, rate_weight)


def refine(networks: Networks, search: EffortSearch, pixels: np.ndarray, iterations: int,
           coded_bytes: CodedBytes, progress: Progress | None = None) -> np.ndarray:
    """The variable of `search` that, quantized, decodes closer to `pixels` than where it started for
    about the same size (`coded_bytes`: the size of the file a variable gives, alone). A large picture
    is searched tile by tile, so the gradient graph's memory stays bounded; each tile keeps the cells
    nearer its centre than its neighbours'. A method's own code (a learned method's) is searched whole:
    its hyperprior is the whole picture's."""
    gradient = networks.gradient_graph(search.gradient)
    ratio = search.cell_latent_cells
    factor = networks.manifest.downsampling_factor * ratio
    cells = search.start.shape[1:]
    target = np.pad(pixels, ((0, 0), (0, 0), (0, cells[0] * factor - pixels.shape[2]),
                             (0, cells[1] * factor - pixels.shape[3])), mode="edge")
    latent_tiling = networks.tiling("decoder_vjp", cells[0] * ratio, cells[1] * ratio)
    if latent_tiling is None or ratio != 1:
        return _refine_region(gradient, search, search.start, target, iterations, coded_bytes, progress)
    tiles = cut(*cells, Tiling(max(4, latent_tiling.tile // ratio), latent_tiling.overlap // ratio))
    refined = search.start.copy()
    for number, tile in enumerate(tiles):
        def tile_progress(done: int, total: int, before: int = number * iterations) -> None:
            if progress is not None:
                progress(before + done, len(tiles) * iterations)

        found = _refine_region(gradient, search, tile.of(search.start, 1), tile.of(target, factor), iterations,
                               coded_bytes, tile_progress)
        top, bottom, left, right = tile.owned
        tile.of(refined, 1)[:, top:bottom, left:right] = found[:, top:bottom, left:right]
    return refined


def _refine_region(gradient: Graph, search: EffortSearch, start: np.ndarray, target: np.ndarray, iterations: int,
                   coded_bytes: CodedBytes, progress: Progress | None) -> np.ndarray:
    """The search over one region and the pixels it covers: its best, or where it started when that is
    better. Both are coded for real (an entropy pass, no network): effort never does worse than effort
    0 on the objective it optimises, whatever the rate estimate's error."""
    pixels = target.shape[2] * target.shape[3]
    found = LatentSearch(gradient, target, search.quantize, search.steps, pixels).run(start, iterations, progress)

    def objective(candidate: tuple[np.ndarray, float]) -> float:
        return candidate[1] + found.rate_weight * 8 * coded_bytes(candidate[0], target.shape[3], target.shape[2]) / pixels

    return min([(found.latent, found.distortion), (start, found.start_distortion)], key=objective)[0]
