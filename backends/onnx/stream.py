"""Write an ONNX model to a file straight from the IR's weight arrays, without a copy of the weights in memory.

`model.SerializeToString()` builds the whole file in memory, and protobuf first serialises into a buffer of
its own, so writing an N-byte model costs 2N to 3N bytes on top of the model, which itself is a copy of the
IR's weights: for a 400 MB network that was the peak of `easc transform`. This writer takes the model from
`exporter.export_parts` (initializers with names and shapes, no data) and the float32 arrays, and relies on a
rule of the protobuf wire format: a message parsed from the concatenation of serialised messages is their
merge, repeated fields appended and embedded messages merged field by field. The file is

    [ ModelProto { graph { initializer: t_1 } } ] ... [ ModelProto { graph { initializer: t_k } } ]
    [ ModelProto with data-free initializers removed (ir_version, opsets, nodes, inputs, outputs) ]

where each t_i is the initializer's header (name, dims, data type) followed by its `raw_data` field, whose
bytes are written from the array's own memory. Every protobuf reader (onnx.load, onnxruntime) reads back the
model with its initializers in order. Memory: the headers only.
"""

from __future__ import annotations

from .exporter import raw_bytes

_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _key_and_length(field: int, length: int) -> bytes:
    """A length-delimited field's key and length, as varints."""
    out = bytearray()
    for value in ((field << 3) | 2, length):
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def write_model(model, weights: list, file) -> None:
    """Write `model` (from `export_parts`: initializers without data) with `weights` (their arrays, in order)
    to the binary `file`. `model.graph.initializer` is emptied (its headers are written first)."""
    if len(weights) != len(model.graph.initializer):
        raise ValueError(f"{len(model.graph.initializer)} initializers but {len(weights)} arrays")
    for tensor, array in zip(model.graph.initializer, weights):
        header = tensor.SerializeToString()
        data = raw_bytes(array)
        raw = _key_and_length(_RAW_DATA_FIELD, data.nbytes)
        size = len(header) + len(raw) + data.nbytes
        inner = _key_and_length(_INITIALIZER_FIELD, size)
        file.write(_key_and_length(_GRAPH_FIELD, len(inner) + size))
        file.write(inner + header + raw)
        file.write(data)
    del model.graph.initializer[:]
    file.write(model.SerializeToString())
