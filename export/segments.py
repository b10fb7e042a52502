"""An encoder or decoder cut at its group norms and attentions, so that tiles see image-wide statistics.

A group norm normalises each tile with that tile's own mean and variance, where the whole decode uses
the picture's: tiles then disagree visibly with the whole decode, and estimated statistics (a first
tiled pass's, or a downscaled latent's) do not fix it: the errors of early layers grow through the
later ones.
Exact statistics need every tile to reach a norm before any tile goes past it. So the graph is cut
before every norm: segment k computes, for one tile, everything up to the input of norm k; the
runtime gathers that input's moments over all tiles, normalises each tile with them, and runs
segment k + 1.

torch exports a group norm as Reshape(x, [N, groups, -1]) -> InstanceNormalization (scale 1, bias 0)
-> Reshape -> Mul (gamma) -> Add (beta); the Reshape and InstanceNormalization are what the runtime
replaces. Each segment lists the tensors it reads (earlier segments' outputs, the normalised tensor)
and writes (what later segments read), so the runtime holds only what is still needed.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sdlite.manifest import Graph, Segment, file_sha256

from .precision import mean_squared_error


def group_norms(model: onnx.ModelProto) -> list[tuple[int, onnx.NodeProto, onnx.NodeProto]] | None:
    """(position, Reshape, InstanceNormalization) of every group norm in graph order; None when the
    graph has an instance norm of another form (scale or bias not 1 and 0, or not fed by a Reshape)."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = []
    for position, node in enumerate(model.graph.node):
        if node.op_type != "InstanceNormalization":
            continue
        reshape = producer.get(node.input[0])
        scale, bias = (constants.get(name) for name in node.input[1:3])
        if (reshape is None or reshape.op_type != "Reshape" or readers[reshape.output[0]] != 1
                or scale is None or bias is None or not (scale == 1).all() or not (bias == 0).all()):
            return None
        found.append((position, reshape, node))
    return found


def attentions(model: onnx.ModelProto) -> list[tuple[int, list[onnx.NodeProto]]]:
    """(position, [MatMul, Softmax, MatMul]) of every attention: softmax(q @ kT) @ v, the scores read by
    nothing else."""
    producer = {output: node for node in model.graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or next((a.i for a in node.attribute if a.name == "axis"), -1) != -1:
            continue
        scores, after = producer.get(node.input[0]), readers.get(node.output[0], [])
        if (scores is None or scores.op_type != "MatMul" or len(readers[scores.output[0]]) != 1
                or len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != node.output[0]):
            continue
        found.append((list(model.graph.node).index(after[0]), [scores, node, after[0]]))
    return found


def split(source: Path, folder: Path, prefix: str) -> list[Segment] | None:
    """Writes the segments of the graph at `source` as `prefix`.segmentN.onnx into `folder`; None when it
    has no group norm (nothing to gain) or one of an unknown form. Attentions are cut out too, so that
    each tile attends to the whole picture as in the whole decode."""
    model = onnx.load(str(source))
    ordered = topological(list(model.graph.node), {value.name for value in model.graph.input})
    del model.graph.node[:]
    model.graph.node.extend(ordered)  # the cuts are positions in this order
    nodes = list(model.graph.node)
    norms = group_norms(model)
    if not norms:
        return None
    constants = {t.name: t for t in model.graph.initializer}
    # Each cut: (position, nodes the runtime replaces, tensors it reads, what it provides, Segment fields)
    cuts = [(position, [reshape, norm], [reshape.input[0]],
             dict(normalised=norm.output[0], groups=int(numpy_helper.to_array(constants[reshape.input[1]])[1]),
                  epsilon=next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)))
            for position, reshape, norm in norms]
    cuts += [(position, pieces, [pieces[0].input[0], pieces[0].input[1], pieces[2].input[1]],
              dict(attended=pieces[2].output[0])) for position, pieces in attentions(model)]
    cuts.sort(key=lambda cut: cut[0])
    replaced = {id(node) for cut in cuts for node in cut[1]}
    bounds = [-1, *(cut[0] for cut in cuts), len(nodes)]
    parts = [[node for node in nodes[start + 1:end] if id(node) not in replaced]
             for start, end in zip(bounds, bounds[1:])]
    types = tensor_types(model)
    graph_outputs = [output.name for output in model.graph.output]
    segments = []
    for k, part in enumerate(parts):
        produced = {name for node in part for name in node.output}
        later = {name for rest in parts[k + 1:] for node in rest for name in node.input}
        read = cuts[k][2] if k < len(cuts) else []
        inputs = sorted({name for node in part for name in node.input
                         if name and name not in produced and name not in constants})
        # what the runtime reads at the cut first, in its order; then what later segments read
        outputs = read + sorted((produced & (later | set(graph_outputs))) - set(read))
        used = {name for node in part for name in node.input}
        graph = helper.make_graph(part, f"{prefix}-segment{k}",
                                  [helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
                                   for name in inputs],
                                  [helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
                                   for name in outputs],
                                  [constants[name] for name in sorted(used & set(constants))])
        segment_model = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        name = f"{prefix}.segment{k}.onnx"
        onnx.save(segment_model, str(folder / name))
        segments.append(Segment(Graph(name, file_sha256(folder / name), inputs, outputs),
                                **(cuts[k][3] if k < len(cuts) else {})))
    return segments


def topological(nodes: list[onnx.NodeProto], inputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where each comes after what it reads, as close to theirs as that allows,
    and each node computed from constants alone (an int8 graph's weight dequantisation) just before
    its first reader, in that reader's segment: placed where the quantiser put them, every tile would
    hold all the weights between segments (1.2 MB a latent cell for the SD encoder). The fp16
    converter appends the Cast of the graph's input after every other node, which this moves up."""
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    waiting = [{producer[name] for name in node.input if name in producer and name not in inputs}
               for node in nodes]
    readers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting):
        for need in needs:
            readers.setdefault(need, []).append(index)
    constant = [False] * len(nodes)
    for index, node in enumerate(nodes):  # producers come first in an exported graph
        reads_input = any(name in inputs for name in node.input)
        constant[index] = not reads_input and all(constant[need] for need in waiting[index])
    place = list(range(len(nodes)))
    for index in reversed(range(len(nodes))):
        if constant[index] and readers.get(index):
            place[index] = min(place[reader] for reader in readers[index])
    ready = [(place[index], index) for index, needs in enumerate(waiting) if not needs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, index = heapq.heappop(ready)
        ordered.append(nodes[index])
        for reader in readers.get(index, []):
            waiting[reader].discard(index)
            if not waiting[reader]:
                heapq.heappush(ready, (place[reader], reader))
    return ordered


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {value.name: value.type.tensor_type.elem_type for value in values if value.type.tensor_type.elem_type}


def check_segments(segments: list[Segment], folder: Path, source: Path, names: tuple[str, str], array: np.ndarray,
                   factor: int, tolerance: float, float32: np.ndarray | None = None) -> tuple[dict, float]:
    """Runs the segments on `array` (`factor` x the latent grid a side) in one piece, where the picture's
    statistics are the tile's own: the result must be the graph at `source`'s, or for a lower-precision
    graph, whose float32 output is `float32`, no further from it than the whole graph is. Returns the
    check's record and the most bytes of tensors held between two segments at once, per latent cell
    (what the runtime holds per tile)."""
    from sdlite.errors import SdliteError
    from sdlite.networks.lockstep import run_segments
    from sdlite.networks.inference import Graph as Runner

    runners = [Runner(folder / s.graph.file, "cpu", s.graph.input, s.graph.output) for s in segments]
    peak = [0]

    def watch(held: dict[str, np.ndarray]) -> None:
        peak[0] = max(peak[0], sum(array.nbytes for array in held.values()))

    height, width = array.shape[2] // factor, array.shape[3] // factor
    (actual,) = run_segments(segments, runners, [array], [(0, height, 0, width)], factor, watch)
    expected = Runner(source, "cpu", *names)(array)
    difference = float(np.abs(actual - expected).max())
    bound = tolerance * max(1.0, float(np.abs(expected).max()))
    record = {"max_abs_diff": difference, "bound": bound, "input_shape": list(array.shape)}
    if float32 is None:
        if not difference <= bound:
            raise SdliteError(f"the segments of {source.name} differ from it by {difference:.3g}, above {bound:.3g}")
    else:
        # The norms computed in numpy instead of onnxruntime differ in the last bits, which turns a few
        # roundings to int8 the other way, and those errors travel like the graph's own: the segments
        # are held to twice the whole graph's squared error against float32 (3 dB), or to the float32
        # graphs' bound where that is larger (fp16 is that close).
        whole, cut = mean_squared_error(expected, float32), mean_squared_error(actual, float32)
        record["float32_mse"] = {"whole": whole, "segments": cut}
        if not cut <= max(2 * whole, bound**2):
            raise SdliteError(f"the segments of {source.name} are {cut:.3g} from float32 (mean squared), "
                              f"more than twice the whole graph's {whole:.3g} and above {bound**2:.3g}")
    return record, peak[0] / (height * width)
