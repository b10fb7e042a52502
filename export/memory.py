"""How much memory a graph needs for a tile of a given size, measured at export for tiling to plan with.

Peak RSS is measured in fresh processes at two tile sizes, one run each, and fitted with fixed + linear *
cells. One run tells what a tiled picture's many runs take: without onnxruntime's memory pattern (see
sdlite.networks.inference.session_options) later runs reuse the first run's arena chunks (measured on the random
SD decoder at 16, 32 and 56 cells and its encoder: the same peak after one run as after three).
Attention is quadratic in the cells, and at the small sizes that can be run quickly it is lost in the
noise, so its term is counted instead: the elements of every Softmax (the attention scores) per
cell squared, times three copies alive at once (scores, probabilities, the product being formed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from sdlite.errors import SdliteError

MEASURED_SIDES = (16, 32)  # latent cells per side: large enough to dwarf the noise, quick to run
ATTENTION_COPIES = 3

_PEAK_RSS = """
import resource, sys, numpy as np
from pathlib import Path
from sdlite.networks.inference import Graph
path, name, channels, height, width = sys.argv[1:]
graph = Graph(Path(path), "cpu", name, "-")
graph.session.run(None, {name: np.zeros((1, int(channels), int(height), int(width)), np.float32)})
try:  # this process's own high-water mark: ru_maxrss would carry over the parent's across exec
    status = Path("/proc/self/status").read_text()
    print(int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024)
except (OSError, StopIteration):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(path: Path, input_name: str, shape: tuple[int, int, int, int]) -> float:
    """Peak bytes of a fresh process that loads the graph and runs it once on an input of `shape`."""
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path), input_name, *map(str, shape[1:])],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SdliteError(f"measuring the memory of {path.name} failed: {result.stderr.strip().splitlines()[-1:]}")
    return float(result.stdout.split()[-1])


def attention_elements(path: Path, input_name: str, shape: tuple[int, int, int, int]) -> int:
    """Elements of the largest Softmax output for an input of `shape`."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    softmaxes = [node.output[0] for node in model.graph.node if node.op_type == "Softmax"]
    if not softmaxes:
        return 0
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in softmaxes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(softmaxes, {input_name: np.zeros(shape, np.float32)})
    return max(value.size for value in values)


def memory_model(path: Path, input_name: str, channels: int, factor: int) -> list[float]:
    """[fixed, linear, quadratic]: peak bytes ~ fixed + linear * n + quadratic * n**2 for n latent cells,
    `factor` being the graph's input pixels per latent cell along a side (8 for an encoder, 1 for a decoder)."""
    def shape(side: int) -> tuple[int, int, int, int]:
        return 1, channels, side * factor, side * factor

    small, large = MEASURED_SIDES
    quadratic = ATTENTION_COPIES * 4 * attention_elements(path, input_name, shape(small)) / small**4
    peaks = [peak_rss(path, input_name, shape(side)) - quadratic * side**4 for side in MEASURED_SIDES]
    linear = max(0.0, (peaks[1] - peaks[0]) / (large**2 - small**2))
    fixed = peaks[0] - linear * small**2
    return [round(fixed), round(linear, 1), round(quadratic, 4)]
