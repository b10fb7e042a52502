"""Nearest 2x upsampling and a 3x3 convolution, computed as phase convolutions at the lower resolution."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.subpixel import fold_upsampling


def upsample_then_convolve(channels: int, bias: bool, also_output_upsampled: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, channels, 3, 3)).astype(np.float32)
    initializers = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                    numpy_helper.from_array(weight, "weight")]
    inputs = ["up", "weight"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "bias"))
        inputs.append("bias")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], name="resize", mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Conv", inputs, ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, None, None])]
    if also_output_upsampled:
        outputs.append(helper.make_tensor_value_info("up", TensorProto.FLOAT, [1, channels, None, None]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, None, None])],
                              outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def run(model: onnx.ModelProto, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": array})[0]


@pytest.mark.parametrize("bias", [True, False])
def test_phase_convolutions_give_what_upsampling_then_convolving_gives(bias):
    model = upsample_then_convolve(3, bias)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_upsampling(folded) == 1
    onnx.checker.check_model(folded)
    assert {node.op_type for node in folded.graph.node} == {"Conv", "Concat", "DepthToSpace"}
    assert "weight" not in {tensor.name for tensor in folded.graph.initializer}
    array = np.random.default_rng(1).normal(size=(1, 3, 7, 10)).astype(np.float32)  # odd sides: every edge case
    expected = run(model, array)
    assert expected.shape == (1, 5, 14, 20)
    assert np.abs(run(folded, array) - expected).max() < 1e-5


def test_an_upsampling_read_elsewhere_too_is_left_alone():
    model = upsample_then_convolve(3, True, also_output_upsampled=True)
    assert fold_upsampling(model) == 0


def test_the_exported_decoder_upsamples_through_phase_convolutions(tiny_model):
    decoder = onnx.load(str(tiny_model / "decoder.onnx"))
    operators = [node.op_type for node in decoder.graph.node]
    assert "Resize" not in operators and operators.count("DepthToSpace") == 3  # the tiny VAE upsamples three times
