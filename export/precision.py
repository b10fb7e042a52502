"""Lower-precision variants of the exported graphs, each with its measured quality cost and speed.

- int8 (CPU): static QDQ quantisation of the convolutions (per-channel int8 weights, uint8
  activations calibrated on pictures), which onnxruntime runs with VNNI/AMX integer kernels. Group
  norms, attention and the rest stay in float32: they are a small share of the arithmetic and the
  most sensitive to rounding. Where the rounding errors still add up to more than INT8_TARGET_DB
  (random weights do that in the SD decoder), convolutions go back to float32, those whose rounding
  costs the most quality for the time they save first.
- fp16 (CUDA): every float tensor in half precision except the nodes that overflow. The SD decoder
  is known to leave fp16's range in some layers, so the converted graph is run with every
  intermediate exposed, and each node whose output is not finite while its inputs are is put back in
  float32, until no value anywhere is inf or NaN.

bf16 is not offered: onnxruntime's CPU provider has no bf16 convolution, so a bf16 graph would run
slower than float32 (it would be cast back op by op).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from sdlite.errors import SdliteError
from sdlite.networks.inference import Graph
from sdlite.manifest import Graph as GraphEntry
from sdlite.manifest import TIMED_SIDE, Variant, file_sha256
from sdlite.networks.precision import ACCEPTABLE_PSNR_DB

from .calibration import center_crop

VARIANT_DEVICES = {"int8": ["cpu"], "fp16": ["cuda"]}
MAX_FP16_ROUNDS = 64
# The PSNR against float32 an int8 graph is brought to on the calibration pictures (crops of 128x128),
# above the acceptable one because larger pictures come out about 1 dB lower than the crops.
INT8_TARGET_DB = ACCEPTABLE_PSNR_DB + 1.5
# The largest share of the convolutions' arithmetic kept in float32 to meet it. A float32 convolution
# takes about 4x the time of an int8 one, so at this share the variant is still clearly faster than
# float32. Heavy-tailed activations, which 8-bit per-tensor ranges cannot follow (the random-weight SD
# decoder's), need about this much.
INT8_FLOAT32_SHARE = 0.45
Quality = Callable[[onnx.ModelProto], float]  # a variant graph's PSNR against float32, in dB


def mean_squared_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Of two pictures in [0, 1]."""
    mse = mean_squared_error(a, b)
    return 99.0 if mse < 1e-10 else 10 * np.log10(1.0 / mse)


def timed(graph: Graph, array: np.ndarray) -> tuple[np.ndarray, float]:
    """The graph's output and the seconds of its second run (the first pays for allocations)."""
    graph(array)
    started = time.perf_counter()
    output = graph(array)
    return output, time.perf_counter() - started


def int8_graph(source: Path, target: Path, input_name: str, calibration: list[np.ndarray],
               quality: Quality) -> list[str]:
    """Writes the int8 graph and returns the convolutions kept in float32: none when the whole graph
    in int8 is within INT8_TARGET_DB of float32, else the first units of `float32_order` up to the
    fewest that bring it there, or all of them when even those fall short."""
    quantize_convolutions(source, target, input_name, calibration, excluded=[])
    quantised, original = onnx.load(str(target)), onnx.load(str(source))
    if quality(quantised) >= INT8_TARGET_DB:
        return []
    order = float32_order(quantised, original, convolution_costs(original, input_name, calibration[0]), quality)
    # Quality grows with each unit taken out of int8, so the fewest that meet the target are found by
    # bisection.
    low, high = 0, len(order)
    while low < high:
        middle = (low + high) // 2
        taken = {name for unit in order[:middle] for name in unit}
        if quality(in_float32(quantised, original, taken)) >= INT8_TARGET_DB:
            high = middle
        else:
            low = middle + 1
    kept = [name for unit in order[:low] for name in unit]
    if kept:
        quantize_convolutions(source, target, input_name, calibration, excluded=kept)
    return kept


def squared_error(db: float) -> float:
    """The mean squared error of a PSNR in dB (pictures in [0, 1])."""
    return 10 ** (-db / 10)


def sharing_input(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The convolutions grouped by the tensor they read: the quantiser rounds a tensor once for all its
    readers, so a convolution reads it unrounded only when every convolution reading it is in float32
    (the four phase convolutions of an upsampling, see subpixel.py, are worth little one at a time)."""
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            groups.setdefault(node.input[0], []).append(node.name)
    return [tuple(group) for group in groups.values()]


def float32_order(quantised: onnx.ModelProto, original: onnx.ModelProto, costs: dict[str, float],
                  quality: Quality) -> list[tuple[str, ...]]:
    """Units of convolutions (those `sharing_input`) that go back to float32, in order, within
    INT8_FLOAT32_SHARE of the arithmetic: those whose rounding costs the most quality per multiply-add
    first. Each unit's rounding adds its own part of the squared error (the parts measured one at a
    time add up to about the whole graph's), so the part each removes alone ranks them; this order
    keeps more quality for the same share of arithmetic than taking the cheapest first."""
    error = squared_error(quality(quantised))
    units = sharing_input(original)
    cost = {unit: sum(costs[name] for name in unit) for unit in units}
    removed = {unit: error - squared_error(quality(in_float32(quantised, original, set(unit)))) for unit in units}
    budget, spent, order = INT8_FLOAT32_SHARE * sum(costs.values()), 0.0, []
    for unit in sorted(cost, key=lambda unit: removed[unit] / cost[unit], reverse=True):
        if spent + cost[unit] <= budget:
            order.append(unit)
            spent += cost[unit]
    return order


def convolution_costs(model: onnx.ModelProto, input_name: str, array: np.ndarray) -> dict[str, float]:
    """Each convolution's multiply-adds on `array`: its weights' size times its output's area."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    convolutions = [node for node in probe.graph.node if node.op_type == "Conv"]
    probe.graph.output.extend(onnx.ValueInfoProto(name=node.output[0]) for node in convolutions)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [node.output[0] for node in convolutions]
    areas = [value.shape[2] * value.shape[3] for value in session.run(outputs, {input_name: array})]
    weights = {tensor.name: np.prod(tensor.dims) for tensor in probe.graph.initializer}
    return {node.name: float(weights[node.input[1]] * area) for node, area in zip(convolutions, areas)}


def quantize_convolutions(source: Path, target: Path, input_name: str, calibration: list[np.ndarray],
                          excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.inputs = iter({input_name: array} for array in calibration)

        def get_next(self):
            return next(self.inputs, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs every tensor it touches
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=excluded)


def before_rounding(producer: dict[str, onnx.NodeProto], name: str) -> str | None:
    """The float32 value that the tensor `name` is rounded from, when it is DequantizeLinear(QuantizeLinear(value))."""
    dequantize = producer.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = producer.get(dequantize.input[0])
    return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else None


def in_float32(quantised: onnx.ModelProto, original: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """The quantised graph as quantising it without the nodes `names` would make it: they read float32
    again (the activation from before its QuantizeLinear, the weights and bias from the float32 graph),
    and what reads their outputs reads them before the rounding; but a tensor that an int8 convolution
    reads stays rounded for every reader, as the quantiser leaves it (the four phase convolutions of an
    upsampling share their input). The quantisers left unread are harmless."""
    model = onnx.ModelProto()
    model.CopyFrom(quantised)
    producer = {output: node for node in model.graph.node for output in node.output}
    int8 = {node.name for node in model.graph.node if node.op_type == "Conv"} - names
    read_by_int8 = {name for node in model.graph.node if node.name in int8 for name in node.input}
    for node in model.graph.node:
        if node.name in int8:
            continue
        for i, name in enumerate(node.input):
            rounded = before_rounding(producer, name)
            if (rounded is not None and getattr(producer.get(rounded), "name", None) in names
                    and name not in read_by_int8):
                node.input[i] = rounded
    float_weights = {tensor.name: tensor for tensor in original.graph.initializer}
    present = {tensor.name for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            if producer.get(name) is None or producer[name].op_type != "DequantizeLinear":
                continue
            rounded = before_rounding(producer, name)
            if rounded is not None:
                if name not in read_by_int8:
                    node.input[i] = rounded
                continue
            weight = name.removesuffix("_DequantizeLinear_Output")  # the quantiser's naming
            if weight not in float_weights:
                raise SdliteError(f"int8: cannot find the float32 weights of {node.name} ({weight})")
            copy = f"{weight}_float32"  # the bias's dequantised value keeps the original name
            if copy not in present:
                tensor = model.graph.initializer.add()
                tensor.CopyFrom(float_weights[weight])
                tensor.name = copy
                present.add(copy)
            node.input[i] = copy
    return model


def fp16_graph(source: Path, target: Path, input_name: str, calibration: list[np.ndarray],
               quality: Quality) -> list[str]:
    """Writes the fp16 graph and returns the nodes kept in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    original = {node.name for node in model.graph.node}
    kept: list[str] = []
    for _ in range(MAX_FP16_ROUNDS):
        converted = elide_round_trips(convert_float_to_float16(
            onnx.load(str(source)), keep_io_types=True, node_block_list=kept, disable_shape_infer=True))
        overflowing = set()
        for array in calibration:
            overflowing |= first_nonfinite_nodes(converted, input_name, array)
        if not overflowing:
            onnx.save(converted, str(target))
            return kept
        for node in converted.graph.node:
            if node.name not in overflowing:
                continue
            if node.name in original:
                kept.append(node.name)
            else:  # a cast the converter put in: what overflows is the float32 value it narrows, so the
                # nodes that read it stay in float32 too
                kept += [n.name for n in converted.graph.node if node.output[0] in n.input and n.name in original]
        kept = sorted(set(kept))
    raise SdliteError(f"fp16: values still overflow after keeping {len(kept)} nodes in float32")


def elide_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Between two float32 nodes the converter still narrows the value to fp16 and widens it back, which
    is where an overflowing value turns into inf: those nodes read the float32 value directly instead."""
    nodes = model.graph.node
    narrowed = {node.output[0]: node.input[0] for node in nodes
                if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT16}
    widened = {node.output[0]: narrowed[node.input[0]] for node in nodes
               if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT and node.input[0] in narrowed}
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in widened:
                node.input[i] = widened[name]
    graph_outputs = {output.name for output in model.graph.output}
    while True:  # drop the casts nothing reads any more
        read = {name for node in nodes for name in node.input} | graph_outputs
        dead = [node for node in nodes if node.op_type == "Cast" and node.output[0] not in read]
        if not dead:
            return model
        for node in dead:
            nodes.remove(node)


def first_nonfinite_nodes(model: onnx.ModelProto, input_name: str, array: np.ndarray) -> set[str]:
    """The nodes whose outputs hold inf or NaN although all their inputs are finite."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {output.name for output in probe.graph.output}
    names = [name for node in probe.graph.node for name in node.output if name and name not in existing]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every value as written
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    values = dict(zip(outputs, session.run(outputs, {input_name: array})))
    values[input_name] = array

    def finite(name: str) -> bool:
        value = values.get(name)
        return value is None or not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())

    return {node.name for node in probe.graph.node
            if not all(finite(name) for name in node.output) and all(finite(name) for name in node.input if name)}


# (source, target, input name, calibration inputs, quality) -> the nodes kept in float32; fp16 keeps
# the nodes that overflow whatever their quality cost, so it does not ask for it.
BUILDERS = {"int8": int8_graph, "fp16": fp16_graph}
CALIBRATION_SIDE = 128
CHECK_SIDE = TIMED_SIDE  # also where each graph is timed
QUALITY_PICTURES = 3  # of the calibration pictures, to choose the int8 convolutions kept in float32


def synthetic_picture(side: int, seed: int) -> np.ndarray:
    """Smooth colour fields, hard edges and fine noise: the kinds of content a photo mixes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    channels = [0.5 + 0.4 * np.sin(rng.uniform(2, 12) * x + rng.uniform(2, 12) * y + rng.uniform(0, 6))
                for _ in range(3)]
    picture = np.stack(channels)
    cells = rng.integers(2, 9)
    picture *= 0.6 + 0.4 * (((x * cells).astype(int) + (y * cells).astype(int)) % 2)
    picture += rng.normal(0, rng.uniform(0.01, 0.08), picture.shape)
    return np.clip(picture, 0, 1).astype(np.float32)[None]


def pictures_for(photos: list[np.ndarray] | None, count: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """Calibration pictures (crops of CALIBRATION_SIDE) and one other picture to measure quality and
    speed on (a crop of CHECK_SIDE): from the calibration photos, or made up when there are none."""
    pictures = photos or [synthetic_picture(CHECK_SIDE, seed) for seed in range(count + 1)]
    pictures = pictures[:count + 1]
    return [center_crop(p, CALIBRATION_SIDE) for p in pictures[:-1]], center_crop(pictures[-1], CHECK_SIDE)


def quality_against_float32(role: str, input_name: str, decoder: Graph, pictures: list[np.ndarray],
                            latents: list[np.ndarray]) -> Quality:
    """PSNR of the pictures decoded through a variant of the encoder (with the float32 decoder) or of
    the decoder (from the float32 encoder's latents) against the float32 chain's."""
    import onnxruntime as ort

    references = np.concatenate([decoder(latent) for latent in latents])

    def quality(model: onnx.ModelProto) -> float:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {input_name: array})[0] for array in (pictures if role == "encoder" else latents)]
        return psnr(np.concatenate([decoder(out) for out in outputs] if role == "encoder" else outputs), references)

    return quality


def build_variant(precision: str, folder: Path, encoder: Graph, decoder: Graph, io_names: dict[str, tuple[str, str]],
                  pictures: list[np.ndarray], check: np.ndarray) -> Variant:
    """The variant's two graphs written into `folder`, calibrated on `pictures`, measured on `check`
    against the float32 encoder and decoder."""
    if precision not in BUILDERS:
        raise SdliteError(f"unknown precision {precision!r}: choose from {', '.join(BUILDERS)}")
    latents = [encoder(picture) for picture in pictures]
    kept, graphs, runners = [], {}, {}
    for role, source, calibration in (("encoder", encoder, pictures), ("decoder", decoder, latents)):
        input_name, output_name = io_names[role]
        name = f"{role}.{precision}.onnx"
        quality = quality_against_float32(role, input_name, decoder, pictures[:QUALITY_PICTURES],
                                          latents[:QUALITY_PICTURES])
        kept += BUILDERS[precision](source.path, folder / name, input_name, calibration, quality)
        runners[role] = Graph(folder / name, "cpu", input_name, output_name)
        graphs[role] = GraphEntry(name, file_sha256(folder / name), input_name, output_name)

    reference_latent, _ = timed(encoder, check)
    reference, _ = timed(decoder, reference_latent)
    variant_latent, encoder_seconds = timed(runners["encoder"], check)
    variant_decode, decoder_seconds = timed(runners["decoder"], reference_latent)
    graphs["encoder"].seconds, graphs["decoder"].seconds = encoder_seconds, decoder_seconds
    quality = {"encoder": psnr(decoder(variant_latent), reference), "decoder": psnr(variant_decode, reference)}
    if not all(np.isfinite(value).all() for value in (variant_latent, variant_decode)):
        raise SdliteError(f"the {precision} variant gives inf or NaN")
    return Variant(precision, VARIANT_DEVICES[precision], graphs["encoder"], graphs["decoder"],
                   {role: round(float(value), 2) for role, value in quality.items()}, float32_nodes=kept)
