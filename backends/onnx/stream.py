"""Write an ONNX model to a file one initializer at a time, without a second copy of its weights in memory.

`model.SerializeToString()` builds the whole file in memory, and protobuf first serialises into a buffer of
its own, so writing an N-byte model costs 2N to 3N bytes on top of the model: for a 400 MB network that is
the peak of `easc transform`. This writer relies on a rule of the protobuf wire format: a message parsed from
the concatenation of two serialised messages is the two merged, repeated fields appended and embedded messages
merged field by field. The file is written as

    [ ModelProto { graph { initializer: t_1 } } ] ... [ ModelProto { graph { initializer: t_k } } ]
    [ ModelProto without initializers (ir_version, opsets, the graph's nodes, inputs, outputs) ]

each part the ordinary serialisation of a small message, so every protobuf reader (onnx.load, onnxruntime)
reads back exactly `model`, initializers in their order. Memory: the model plus one serialised tensor.
"""

from __future__ import annotations

import onnx

_GRAPH_FIELD = 7  # ModelProto.graph


def _tag_and_length(field: int, length: int) -> bytes:
    """A length-delimited field's key and length (varints)."""
    out = bytearray()
    for value in ((field << 3) | 2, length):
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def write_model(model: onnx.ModelProto, file) -> None:
    """Write `model` to the binary `file` (an open file object); empties `model.graph.initializer`.

    The model is consumed so that each tensor's memory can go as soon as it is written.
    """
    graph = onnx.GraphProto()
    for tensor in model.graph.initializer:
        graph.initializer.add().CopyFrom(tensor)
        tensor.Clear()  # its bytes are in `graph` now; let the model's copy go before the next one
        part = graph.SerializeToString()
        file.write(_tag_and_length(_GRAPH_FIELD, len(part)))
        file.write(part)
        del graph.initializer[:]
    del model.graph.initializer[:]
    file.write(model.SerializeToString())
