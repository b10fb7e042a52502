"""Whether an ONNX graph's bytes refer to external data, found without the onnx package.

A tensor may keep its values in another file (`data_location = EXTERNAL`, with a `location` that
onnxruntime resolves relative to the graph's folder, or to the current directory for a graph loaded
from bytes). sdlite's exports never do, so a graph that does is refused before onnxruntime sees it.
This walks the protobuf wire format through every place onnx.proto3 lets a tensor sit: initializers,
sparse initializers, node attributes (tensors and subgraphs, at any depth), functions and training
graphs.
"""

from __future__ import annotations

from .errors import SdliteError

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
MAX_DEPTH = 64  # subgraphs inside subgraphs: deeper than any real graph, shallow enough for the stack

# message -> {field number: message it holds}, from onnx.proto3 (checked against onnx in the tests)
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE_TENSOR, FUNCTION, TRAINING = range(8)
NESTED = {
    MODEL: {7: GRAPH, 25: FUNCTION, 20: TRAINING},
    TRAINING: {1: GRAPH, 2: GRAPH},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE_TENSOR},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE_TENSOR, 23: SPARSE_TENSOR},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},
    SPARSE_TENSOR: {1: TENSOR, 2: TENSOR},
    TENSOR: {},
}
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14


class MalformedGraph(ValueError):
    pass


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise MalformedGraph("a varint runs past its message")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _uses_external_data(data: memoryview, kind: int, depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise MalformedGraph("subgraphs nested too deeply")
    nested = NESTED[kind]
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = _varint(data, position)
            if kind == TENSOR and field == TENSOR_DATA_LOCATION and value != 0:
                return True
        elif wire == FIXED64:
            position += 8
        elif wire == FIXED32:
            position += 4
        elif wire == LENGTH_DELIMITED:
            length, position = _varint(data, position)
            end = position + length
            if end > len(data):
                raise MalformedGraph("a field runs past its message")
            if kind == TENSOR and field == TENSOR_EXTERNAL_DATA:
                return True
            if field in nested and _uses_external_data(data[position:end], nested[field], depth + 1):
                return True
            position = end
        else:  # groups (3, 4) are not in onnx.proto3; 6 and 7 are no wire type
            raise MalformedGraph(f"wire type {wire} is not ONNX's")
        if position > len(data):
            raise MalformedGraph("a field runs past its message")
    return False


def check_self_contained(graph: bytes, label: str) -> None:
    """Refuses a graph whose tensors refer to data outside its own bytes (or that is not protobuf)."""
    try:
        external = _uses_external_data(memoryview(graph), MODEL, 0)
    except MalformedGraph as exc:
        raise SdliteError(f"cannot load {label}: not an ONNX graph ({exc})") from None
    if external:
        raise SdliteError(f"cannot load {label}: it keeps tensor data in other files (ONNX external data), "
                          f"which sdlite never loads")
