"""A generated corpus of hostile model files (tests/test_hostile.py runs every command on each).

Each entry is a folder-independent recipe: `build(folder) -> path` writes the file (and any file it
refers to) into `folder` and returns the model's path. Files are generated, not checked in, so the
corpus documents how each one is made: truncated and garbage files of each format, cycles, unknown
ops, huge / zero / negative dimensions, NaN weights, external data outside the model's folder,
decompression-style bombs in constant folding, and (in INJECTION) names that try to close a string in
generated code.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from easc.backends.onnx import export_model
from easc.ir import GraphBuilder, graph_to_bytes, print_graph

OPSET = 17
MARKER_NAME = "INJECTED"  # the file an injection payload would create


def tiny_graph(name="tiny"):
    """A digits-shaped net (1x8x8 -> 10 classes) with a conv and a linear to widen."""
    b = GraphBuilder(name, rng=np.random.default_rng(0))
    x = b.input("x", (1, 8, 8))
    h = b.relu(b.conv2d(x, 4, 3, padding=1))
    b.output("logits", b.linear(b.flatten(b.global_avgpool(h)), 10))
    return b.build()


def tiny_onnx_bytes() -> bytes:
    return export_model(tiny_graph()).SerializeToString()


def tiny_easir_bytes() -> bytes:
    return graph_to_bytes(tiny_graph())


# -- ONNX ------------------------------------------------------------------------------------------

def _model(nodes, initializers=(), inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    graph = helper.make_graph(list(nodes), "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _relu_after(constant_nodes, initializers=()) -> onnx.ModelProto:
    """A valid x -> Relu -> y model that also computes some constants (the bomb)."""
    return _model([*constant_nodes, helper.make_node("Relu", ["x"], ["y"])], initializers)


def _i64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _onnx(name, model: onnx.ModelProto):
    return lambda folder: _write(folder, name, model.SerializeToString())


def _loop_bomb() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["v", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")])
    return _relu_after([helper.make_node("Loop", ["M", "c", "v"], ["vo"], body=body)],
                       [_i64("M", 10**12), numpy_helper.from_array(np.array(True), "c"),
                        numpy_helper.from_array(np.array([0.0], dtype=np.float32), "v")])


def _input_dims(dims) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])],
                  inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                  outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])


def _nan_conv() -> onnx.ModelProto:
    model = export_model(tiny_graph())
    for t in model.graph.initializer:
        if len(t.dims) == 4:
            w = numpy_helper.to_array(t).copy()
            w.flat[0] = np.nan
            t.CopyFrom(numpy_helper.from_array(w, t.name))
            break
    return model


def _cycle() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Add", ["x", "a"], ["b"]),
                   helper.make_node("Relu", ["b"], ["y"])])


def _lying_initializer() -> onnx.ModelProto:
    """An initializer whose dims promise 10^9 floats while it holds 4 bytes."""
    t = onnx.TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([10**9])
    t.raw_data = b"\0\0\0\0"
    return _relu_after([helper.make_node("Identity", ["w"], ["w2"])], [t])


def _external(location: str, make_target=None):
    """The tiny net with its conv weight in an external file at `location` (relative to the model)."""
    def build(folder: Path) -> Path:
        model = export_model(tiny_graph())
        for t in model.graph.initializer:
            if len(t.dims) == 4:
                nbytes = len(numpy_helper.to_array(t).tobytes())
                t.ClearField("raw_data")
                t.ClearField("float_data")
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                break
        if make_target is not None:
            make_target(folder)
        return _write(folder, "external.onnx", model.SerializeToString())
    return build


def _outside_file(folder: Path) -> None:
    # A real file outside the model's folder, large enough to serve as the weight if it were read.
    (folder.parent / "outside.bin").write_bytes(b"\0" * 4096)


def _symlink_out(folder: Path) -> None:
    _outside_file(folder)
    os.symlink(folder.parent / "outside.bin", folder / "weights.bin")


def _concat_doubling() -> onnx.ModelProto:
    nodes = [helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0) for i in range(40)]
    return _relu_after(nodes, [numpy_helper.from_array(np.ones(1000, dtype=np.float32), "c0")])


ONNX_CASES = {
    "empty.onnx": lambda f: _write(f, "empty.onnx", b""),
    "truncated.onnx": lambda f: _write(f, "truncated.onnx", tiny_onnx_bytes()[: len(tiny_onnx_bytes()) // 2]),
    "garbage.onnx": lambda f: _write(f, "garbage.onnx", np.random.default_rng(1).bytes(3000)),
    "text.onnx": lambda f: _write(f, "text.onnx", b"this is not a model\n" * 20),
    "cycle.onnx": _onnx("cycle.onnx", _cycle()),
    "unknown_op.onnx": _onnx("unknown_op.onnx", _model([helper.make_node("NoSuchOp", ["x"], ["y"])])),
    "custom_domain.onnx": _onnx("custom_domain.onnx", _model([helper.make_node("Relu", ["x"], ["y"], domain="evil")])),
    "huge_dims.onnx": _onnx("huge_dims.onnx", _input_dims([1, 3, 10**12, 10**12])),
    "negative_dims.onnx": _onnx("negative_dims.onnx", _input_dims([1, -3, 8, 8])),
    "zero_dims.onnx": _onnx("zero_dims.onnx", _input_dims([1, 0, 8, 8])),
    "nan_weights.onnx": _onnx("nan_weights.onnx", _nan_conv()),
    "lying_initializer.onnx": _onnx("lying_initializer.onnx", _lying_initializer()),
    "external_parent.onnx": _external("../outside.bin", _outside_file),
    "external_absolute.onnx": _external("/etc/passwd"),
    "external_symlink.onnx": _external("weights.bin", _symlink_out),
    "external_missing.onnx": _external("nowhere.bin"),
    "bomb_constant_of_shape.onnx": _onnx("bomb_constant_of_shape.onnx", _relu_after(
        [helper.make_node("ConstantOfShape", ["s"], ["c"])], [_i64("s", [100000, 100000, 10])])),
    # 1 GB: fits the worker's address space, so only the folding budget stands between it and the allocation.
    "bomb_constant_of_shape_1gb.onnx": _onnx("bomb_constant_of_shape_1gb.onnx", _relu_after(
        [helper.make_node("ConstantOfShape", ["s"], ["c"])], [_i64("s", [25000, 10000])])),
    "bomb_loop.onnx": _onnx("bomb_loop.onnx", _loop_bomb()),
    "bomb_range.onnx": _onnx("bomb_range.onnx", _relu_after(
        [helper.make_node("Range", ["a", "b", "d"], ["r"])], [_i64("a", 0), _i64("b", 10**12), _i64("d", 1)])),
    "bomb_expand.onnx": _onnx("bomb_expand.onnx", _relu_after(
        [helper.make_node("Expand", ["one", "s"], ["e"])],
        [numpy_helper.from_array(np.ones(1, dtype=np.float32), "one"), _i64("s", [10**6, 10**6])])),
    "bomb_tile.onnx": _onnx("bomb_tile.onnx", _relu_after(
        [helper.make_node("Tile", ["one", "r"], ["t"])],
        [numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "one"), _i64("r", [10**6, 10**6])])),
    "bomb_concat_doubling.onnx": _onnx("bomb_concat_doubling.onnx", _concat_doubling()),
}


# -- .easir ----------------------------------------------------------------------------------------

def _safetensors(tensors: dict, metadata: dict | None, header_extra: dict | None = None) -> bytes:
    """A safetensors container written by hand, so that its header can lie."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        dtype = {np.float32: "F32", np.float64: "F64"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _tiny_tensors() -> dict:
    g = tiny_graph()
    return {f"{n.name}/{k}": w for n in g.nodes for k, w in n.weights.items()}


def _meta(graph_text: str) -> dict:
    return {"format": "easc-ir", "version": "1", "graph": graph_text}


def _tiny_text() -> str:
    return print_graph(tiny_graph())


def _edited(old: str, new: str):
    """The tiny net's file with its graph text edited (weights as they were)."""
    text = _tiny_text()
    assert old in text, (old, text)
    return _safetensors(_tiny_tensors(), _meta(text.replace(old, new)))


def _easir(name, data_fn):
    return lambda folder: _write(folder, name, data_fn())


def _conv_out(channels: int) -> bytes:
    """A conv declaring `channels` outputs (and the layers after it agreeing), with the file's small weights."""
    text = _tiny_text().replace("out=4,", f"out={channels},").replace("f32[N,4,8,8]", f"f32[N,{channels},8,8]")
    text = text.replace("f32[N,4,1,1]", f"f32[N,{channels},1,1]").replace("f32[N,4]", f"f32[N,{channels}]")
    return _safetensors(_tiny_tensors(), _meta(text))


def _nan_easir() -> bytes:
    tensors = _tiny_tensors()
    key = next(k for k, w in tensors.items() if w.ndim == 4)
    tensors[key] = tensors[key].copy()
    tensors[key].flat[0] = np.nan
    return _safetensors(tensors, _meta(_tiny_text()))


def _f64_easir() -> bytes:
    tensors = {k: w.astype(np.float64) for k, w in _tiny_tensors().items()}
    return _safetensors(tensors, _meta(_tiny_text()))


def _offsets_outside() -> bytes:
    tensors = _tiny_tensors()
    key = next(iter(tensors))
    extra = {key: {"dtype": "F32", "shape": list(tensors[key].shape), "data_offsets": [10**12, 10**12 + 4 * tensors[key].size]}}
    return _safetensors(tensors, _meta(_tiny_text()), extra)


def _cycle_text() -> str:
    lines = _tiny_text().splitlines()
    # The relu reads the linear defined after it: a cycle in a file that lists nodes in order.
    relu = next(i for i, line in enumerate(lines) if "= relu(" in line)
    lines[relu] = lines[relu].replace("relu(conv_1)", "relu(fc_1)")
    return "\n".join(lines) + "\n"


EASIR_CASES = {
    "empty.easir": lambda f: _write(f, "empty.easir", b""),
    "truncated.easir": lambda f: _write(f, "truncated.easir", tiny_easir_bytes()[: len(tiny_easir_bytes()) * 2 // 3]),
    "garbage.easir": lambda f: _write(f, "garbage.easir", np.random.default_rng(2).bytes(3000)),
    "header_too_long.easir": lambda f: _write(f, "header_too_long.easir", struct.pack("<Q", 2**62) + b"{}"),
    "header_not_json.easir": lambda f: _write(f, "header_not_json.easir", struct.pack("<Q", 10) + b"not json!!"),
    "header_deep_json.easir": lambda f: _write(f, "header_deep_json.easir",
                                               struct.pack("<Q", 200002) + b"[" * 100001 + b"]" * 100001),
    "no_metadata.easir": _easir("no_metadata.easir", lambda: _safetensors(_tiny_tensors(), None)),
    "wrong_version.easir": _easir("wrong_version.easir", lambda: _safetensors(
        _tiny_tensors(), {"format": "easc-ir", "version": "99", "graph": _tiny_text()})),
    "graph_garbage.easir": _easir("graph_garbage.easir", lambda: _safetensors(_tiny_tensors(), _meta("{{{ ]]] \x00"))),
    "cycle.easir": _easir("cycle.easir", lambda: _safetensors(_tiny_tensors(), _meta(_cycle_text()))),
    "unknown_op.easir": _easir("unknown_op.easir", lambda: _edited("= relu(", "= evil_op(")),
    "huge_conv_5e6.easir": _easir("huge_conv_5e6.easir", lambda: _conv_out(5_000_000)),
    "huge_conv_4e8.easir": _easir("huge_conv_4e8.easir", lambda: _conv_out(400_000_000)),
    "huge_input.easir": _easir("huge_input.easir", lambda: _edited("f32[N,1,8,8]", "f32[N,1,1000000000000,8]")),
    "negative_dims.easir": _easir("negative_dims.easir", lambda: _conv_out(-3)),
    "zero_dims.easir": _easir("zero_dims.easir", lambda: _edited("x = input() : f32[N,1,8,8]",
                                                                   "x = input() : f32[N,1,0,8]")),
    "nan_weights.easir": _easir("nan_weights.easir", _nan_easir),
    "f64_weights.easir": _easir("f64_weights.easir", _f64_easir),
    "offsets_outside.easir": _easir("offsets_outside.easir", _offsets_outside),
    "missing_weight.easir": _easir("missing_weight.easir", lambda: _safetensors({}, _meta(_tiny_text()))),
}

CASES = {**ONNX_CASES, **EASIR_CASES}


# -- injection names -------------------------------------------------------------------------------

def payload(marker: Path) -> str:
    """A name that closes a docstring or string literal in generated code and runs a shell command."""
    return f'y""";__import__("os").system("touch {marker}");"""\'\'\';__import__("os").system("touch {marker}");#'


def injection_onnx(folder: Path, marker: Path) -> Path:
    """The tiny net whose graph, output and layer names carry the payload."""
    model = export_model(tiny_graph())
    evil = payload(marker)
    old_out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [evil if o == old_out else o for o in node.output]
        node.name = evil + node.name
    model.graph.output[0].name = evil
    model.graph.name = evil
    return _write(folder, "injection.onnx", model.SerializeToString())


def injection_easir(folder: Path, marker: Path) -> Path:
    """The tiny net's IR file with the payload as graph name, output name and a node's name."""
    evil = payload(marker)
    g = tiny_graph()
    relu = next(n for n in g.nodes if n.op == "relu")
    text = print_graph(g)
    quoted = json.dumps(evil)
    text = text.replace("graph tiny", f"graph {quoted}", 1)
    text = text.replace("output logits =", f"output {quoted} =")
    text = text.replace(f"{relu.name} = relu", f"{json.dumps(evil + 'r')} = relu").replace(
        f"({relu.name})", f"({json.dumps(evil + 'r')})")
    return _write(folder, "injection.easir", _safetensors(_tiny_tensors(), _meta(text)))
