"""`python -m bench speed`: how fast sdlite runs, against the same networks in torch and diffusers.

Every case runs in a fresh process, so that its peak memory (VmHWM) and its cold start (from the
process's launch to the first result) are its own. The full SD 1.x VAE architecture is timed with
random weights: speed does not depend on them. Achieved GFLOP/s are set against the float32
matrix-product peak measured in the same run: numpy's on the CPU, torch's on a CUDA GPU (where the
engines run when `--device cuda` is given; the PSNR reference stays the float32 chain on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KODAK = ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"
TAEF2 = ROOT.parent / "shared" / "models" / "taef2"
# The Stable Diffusion 1.x VAE architecture at full size.
SD1_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
NO_TILING = 1 << 50


@dataclass
class Case:
    engine: str  # sdlite, torch or diffusers
    model: str  # sd1 or taef2
    precision: str
    role: str  # encoder or decoder
    picture: str  # name of the picture the inputs come from
    device: str = "cpu"
    result: dict = field(default_factory=dict)


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024


def torch_module(case: Case, source: str):
    """The torch module a case times: the modules the export wraps into graphs, or diffusers' own
    AutoencoderKL API for the SD architecture."""
    import torch

    from export.sources import load_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if case.engine == "diffusers":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(source).eval().to(case.device)
        scale = vae.config.scaling_factor
        if case.role == "encoder":
            return lambda x: vae.encode(x * 2 - 1).latent_dist.mean * scale
        return lambda z: ((vae.decode(z / scale).sample + 1) / 2).clamp(0, 1)
    loaded = load_model(source, None)
    return (loaded.encoder_graph() if case.role == "encoder" else loaded.decoder_graph()).to(case.device)


def run_case(spec: dict) -> None:
    """In the child process: load, run once (cold), run again (warm), report."""
    case = Case(**spec["case"])
    launched = spec["launched"]
    array = np.load(spec["input"])
    if case.engine == "sdlite":
        import sdlite

        codec = sdlite.Codec.load(spec["folder"], device=case.device, precision=case.precision, max_memory=NO_TILING)
        run = getattr(codec, f"run_{case.role}")
        getattr(codec, case.role)  # the session
    else:
        import torch

        module = torch_module(case, spec["source"])
        tensor = torch.from_numpy(array).to(case.device)

        def run(_):
            with torch.inference_mode():
                return module(tensor).cpu().numpy()  # the copy back waits for the GPU
    ready = time.time() - launched
    started = time.perf_counter()
    output = run(array)
    first = time.perf_counter() - started
    warm = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        run(array)
        warm.append(time.perf_counter() - started)
    np.save(spec["output"], output)
    print(json.dumps({"ready_s": ready, "first_s": first, "first_done_s": ready + first, "warm_s": min(warm),
                      "peak_rss": peak_rss()}))


def numpy_peak_gflops(side: int = 4096, repeats: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((side, side), dtype=np.float32)
    best = float("inf")
    a @ a
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * side**3 / best / 1e9


def torch_cuda_peak_gflops(side: int = 8192, repeats: int = 5) -> float:
    """torch's float32 matrix product on the GPU, in TF32 as onnxruntime's and torch's cuDNN
    convolutions compute float32 by default."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    a = torch.randn(side, side, device="cuda")
    best = float("inf")
    a @ a
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        a @ a
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * side**3 / best / 1e9


def flops(case: Case, source: str, shape: tuple[int, ...]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = torch_module(Case("torch", case.model, "fp32", case.role, case.picture), source)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(torch.zeros(shape))
    return float(counter.get_total_flops())


def pictures(kodak: bool) -> dict[str, np.ndarray]:
    from sdlite import images

    from export.precision import synthetic_picture

    found = {"512x512": synthetic_picture(512, seed=0)}
    if kodak and KODAK.is_file():
        found[f"kodim23 {KODAK.name}"] = images.to_array(images.open_image(KODAK), 8)
    return found


def sd1_weights(models: Path) -> Path:
    """The random-weight full SD 1.x VAE as a diffusers folder (seed 0: the tests' sd1 model too)."""
    folder = models / "sd1-random-weights"
    if not (folder / "config.json").is_file():
        import torch
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(**SD1_CONFIG).eval().save_pretrained(folder)
    return folder


def ensure_sd1(models: Path) -> Path:
    """The random-weight full SD 1.x VAE, exported once with its variants."""
    folder = models / "sd1-random"
    if not (folder / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "export", "build", "--model", str(sd1_weights(models)),
                        "--name", folder.name, "--out", str(models)], check=True, cwd=ROOT)
    return folder


def main(sd1: Path | None, taef2: Path | None, repeats: int, out: Path, kodak: bool = True,
         device: str = "cpu") -> None:
    import sdlite

    from export.precision import psnr

    RESULTS.mkdir(parents=True, exist_ok=True)
    models = {"sd1": (sd1 or ensure_sd1(RESULTS / "models"), str(sd1_weights(RESULTS / "models")))}
    if taef2 is not None:
        models["taef2"] = (taef2, str(TAEF2))
    peak = numpy_peak_gflops() if device == "cpu" else torch_cuda_peak_gflops()
    print(f"float32 matrix product on {device}: {peak:.0f} GFLOP/s", file=sys.stderr)
    rows, starts = [], []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for model, (folder, source) in models.items():
            starts += cold_starts(folder, model, scratch, device)
            manifest = sdlite.Manifest.from_json((folder / "manifest.json").read_text())
            # Each device times the variants made for it: onnxruntime runs fp16 slower on the CPU, and
            # its CUDA provider has no int8 convolution.
            precisions = ["fp32", *(v.precision for v in manifest.variants if device in v.devices)]
            reference = sdlite.Codec.load(folder, precision="fp32", max_memory=NO_TILING)
            engines = [("sdlite", p) for p in precisions]
            if model == "sd1":
                engines += [("torch", "fp32"), ("diffusers", "fp32")]
            for picture, pixels in pictures(kodak).items():
                latent = reference.networks.run_encoder(pixels)
                fp32_picture = reference.networks.run_decoder(latent)
                inputs = {"encoder": pixels, "decoder": latent}
                for role in ("encoder", "decoder"):
                    np.save(scratch / f"{role}.npy", inputs[role])
                    work = flops(Case("torch", model, "fp32", role, picture), source, inputs[role].shape)
                    for engine, precision in engines:
                        case = Case(engine, model, precision, role, picture, device)
                        spec = {"case": case.__dict__, "folder": str(folder), "source": source,
                                "input": str(scratch / f"{role}.npy"), "output": str(scratch / "out.npy"),
                                "repeats": repeats}
                        case.result = in_child(spec)
                        if case.result is None:
                            continue
                        decoded = np.load(scratch / "out.npy")
                        if role == "encoder":  # the encoder's quality shows in the picture it decodes to
                            decoded = reference.networks.run_decoder(decoded)
                        case.result.update(gflop=work / 1e9, psnr=psnr(decoded, fp32_picture))
                        rows.append(case)
                        print(row_text(case, peak), file=sys.stderr, flush=True)
    table = markdown(rows, peak) + (
        "\n| model | device | optimised-graph cache | decoder ready after launch s | 512x512 decoded after launch s | "
        "peak RSS GiB |\n|---|---|---|---|---|---|\n" + "\n".join(starts) + "\n")
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


def in_child(spec: dict, env: dict | None = None) -> dict | None:
    """Run one case in a fresh process; its report, or None (said on stderr) when it failed."""
    spec["launched"] = time.time()
    child = subprocess.run([sys.executable, "-c", "import sys, json; from bench.speed import run_case; "
                            "run_case(json.loads(sys.argv[1]))", json.dumps(spec)],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if child.returncode != 0:
        print(f"{spec['case']} failed: {child.stderr[-800:]}", file=sys.stderr)
        return None
    return json.loads(child.stdout.splitlines()[-1])


def cold_starts(folder: Path, model: str, scratch: Path, device: str) -> list[str]:
    """Process launch to decoder ready, and to a 512x512 picture decoded, with an empty and a warm
    cache of optimised graphs (precision auto: what a user gets)."""
    import sdlite

    manifest = sdlite.Manifest.from_json((folder / "manifest.json").read_text())
    np.save(scratch / "cold.npy", np.zeros((1, manifest.latent_channels, 64, 64), np.float32))
    cache = scratch / "cold-cache"
    lines = []
    for state in ("empty cache", "cached"):
        case = Case("sdlite", model, "auto", "decoder", "512x512 latent", device)
        spec = {"case": case.__dict__, "folder": str(folder), "source": None, "input": str(scratch / "cold.npy"),
                "output": str(scratch / "cold-out.npy"), "repeats": 1}
        result = in_child(spec, {"SDLITE_CACHE_DIR": str(cache)})
        if result is not None:
            lines.append(f"| {model} | {device} | {state} | {result['ready_s']:.2f} | {result['first_done_s']:.2f} | "
                         f"{result['peak_rss'] / 2**30:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def row_text(case: Case, peak: float) -> str:
    r = case.result
    rate = r["gflop"] / r["warm_s"]
    return (f"| {case.model} | {case.picture} | {case.role} | {case.engine} | {case.device} | {case.precision} | "
            f"{r['warm_s']:.3f} | "
            f"{r['first_s']:.3f} | {r['ready_s']:.2f} | {r['first_done_s']:.2f} | {rate:.0f} | "
            f"{100 * rate / peak:.0f}% | {r['peak_rss'] / 2**30:.2f} | {r['psnr']:.1f} |")


def markdown(rows: list[Case], peak: float) -> str:
    head = ("| model | picture | network | engine | device | precision | warm s | first call s | ready after launch s | "
            "first result after launch s | GFLOP/s | of float32 peak | peak RSS GiB | PSNR vs sdlite fp32 dB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    note = (f"\nfloat32 matrix-product peak in this run (numpy on the CPU, torch on a GPU): {peak:.0f} GFLOP/s. "
            f"Warm: best of the repeated runs; PSNR of the decoded picture (for encoders: decoded by the "
            f"float32 decoder) against sdlite's float32 chain on the CPU.\n")
    return head + "\n".join(row_text(case, peak) for case in rows) + "\n" + note
