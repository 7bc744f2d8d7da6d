"""Names in a model file are hostile: the PyTorch code export must never run them.

`easc export M --format torch` writes `model.py`, which easc itself executes (to check it) and which
the user imports later. Every graph, input, output and node name below tries to break out of the
generated source (closing a docstring, a string literal or a comment) and create a marker file; the
export must still work, reproduce the model, and leave no marker behind.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from easc.backends.onnx import load_onnx
from easc.cli.main import main
from easc.ir import GraphBuilder, run, save_graph

_counter = itertools.count()


def _payloads(marker) -> list:
    """Strings that would run `touch(marker)` if pasted into Python source unescaped somewhere."""
    call = f'__import__("pathlib").Path({str(marker)!r}).touch()'
    return [
        f'y""";{call};"""',          # closes a docstring
        f"y''';{call};'''",
        f'y";{call};"',              # closes a string literal
        f"y\n{call}\n",              # a new line after a comment
        f"y\\\n{call}",              # a line continuation
        f"y\r{call}\r",
        f"y\u2028{call}",
    ]


def _import_fresh(path):
    spec = importlib.util.spec_from_file_location(f"easc_hostile_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hostile_onnx(path, names: list) -> None:
    """A conv -> relu -> global pool -> flatten -> gemm model whose every name is one of `names`."""
    rng = np.random.default_rng(0)
    graph_name, in_name, conv, relu, gap, flat, gemm, out_name = (names * 8)[:8]
    # distinct strings for values (ONNX needs unique value names): suffix by role
    x, v1, v2, v3, v4 = in_name + "_in", conv + "_c", relu + "_r", gap + "_g", flat + "_f"
    y = out_name + "_out"
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), conv + ".w")
    fc = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), gemm + ".w")
    nodes = [helper.make_node("Conv", [x, conv + ".w"], [v1], name=conv, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [v1], [v2], name=relu),
             helper.make_node("GlobalAveragePool", [v2], [v3], name=gap),
             helper.make_node("Flatten", [v3], [v4], name=flat),
             helper.make_node("Gemm", [v4, gemm + ".w"], [y], name=gemm, transB=1)]
    g = helper.make_graph(nodes, graph_name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1, 6, 6])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 3])], initializer=[w, fc])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _export_and_check(model_file, graph, out_dir, marker):
    result = CliRunner().invoke(main, ["export", str(model_file), "--format", "torch", "-o", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert not marker.exists(), "a name in the model file ran as code during export"
    module = _import_fresh(out_dir / "model.py")
    assert not marker.exists(), "a name in the model file ran as code when model.py was imported"
    model = module.load()
    x = np.random.default_rng(1).standard_normal((2,) + graph.inputs[0].type.sample_shape).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x))
    got = got if isinstance(got, tuple) else (got,)
    want = run(graph, {graph.inputs[0].name: x})
    for public, g in zip(graph.outputs, got):
        np.testing.assert_allclose(g.numpy(), want[public], rtol=1e-5, atol=1e-5)
    assert tuple(module.__dict__[type(model).__name__].output_names) == tuple(graph.outputs)


@pytest.mark.parametrize("which", range(7))
def test_torch_export_of_an_onnx_file_with_hostile_names_runs_none_of_them(tmp_path, which):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[which]
    path = tmp_path / "m.onnx"
    _hostile_onnx(path, [payload + str(k) for k in range(8)])
    graph = load_onnx(path)
    assert any(payload in o for o in graph.outputs)  # the names really reached the IR
    _export_and_check(path, graph, tmp_path / "out", marker)


@pytest.mark.parametrize("which", range(7))
def test_torch_export_of_an_easir_file_with_hostile_names_runs_none_of_them(tmp_path, which):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[which]
    b = GraphBuilder(payload, rng=np.random.default_rng(0))
    x = b.input(payload + "in", (2, 5, 5))
    h = b.relu(b.conv2d(x, 3, 3, padding=1, name=payload + "conv"), name=payload + "relu")
    pooled = b.flatten(b.global_avgpool(h, name=payload + "gap"), name=payload)
    b.output(payload + "out", b.linear(pooled, 2, name=payload + "fc"))
    b.output(payload + "out2", pooled)
    graph = b.build()
    path = tmp_path / "m.easir"
    save_graph(graph, path)
    _export_and_check(path, graph, tmp_path / "out", marker)
