"""The ONNX backend: export to onnxruntime, export/import round trips, files from both torch
exporters, hand-written ONNX patterns, and every import error message."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from easc.backends.onnx import (OnnxExportError, OnnxImportError, export_model, import_model, load_onnx,
                                run_onnx, save_onnx)
from easc.ir import BATCH, OPS, GraphBuilder, IRError, parse_graph, print_graph, run

# onnxruntime computes in float32, the IR's interpreter in float64: float32 rounding over a few
# layers of small width stays near 1e-6 relative.
TOL = 1e-5


def assert_close(got, want, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    scale = 1.0 + float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= TOL * scale, f"{what}: max error {err:.3g} > {TOL * scale:.3g}"


def feeds_for(graph, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {n.name: rng.standard_normal((batch,) + n.type.sample_shape).astype(np.float32) for n in graph.inputs}


def modern_ops_branch(b, h):
    """The ops of mobile networks on an NCHW value (6 channels): activations, pad, depthwise conv,
    squeeze-excitation gate, channel shuffle, split and gather; returns a pooled (N, 4, 1, 1) value."""
    e = b.add("clip", [h], {"min": 0.0, "max": 6.0})
    e = b.add("leaky_relu", [b.add("hardswish", [e])], {"slope": 0.1})
    p = b.add("pad", [e], {"pads": (1, 0, 2, 1), "value": 0.5})
    dw = b.conv2d(p, 6, 3, groups=6)
    gate = b.add("hardsigmoid", [b.conv2d(b.add("silu", [b.conv2d(b.global_avgpool(dw), 3, 1)]), 6, 1)])
    se = b.add("mul", [dw, gate])
    sl = b.add("slice", [b.add("channel_shuffle", [se], {"groups": 3})], {"start": 1, "end": 5})
    sl = b.add("channel_gather", [sl], {"index": (3, 0, 0, 2)})
    s = b.add("mul", [b.add("sigmoid", [sl]), b.add("clip", [sl], {"min": -1.0, "max": 0.75})])
    return b.global_avgpool(s)


def every_op_graph():
    """A graph using every op of the IR, with non-trivial batchnorm statistics."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("every_op", rng=rng)
    x = b.input("x", (3, 9, 9))
    bn_w = {"scale": rng.uniform(0.5, 2, 6), "bias": rng.normal(size=6), "mean": rng.normal(size=6),
            "var": rng.uniform(0.5, 2, 6)}
    h = b.relu(b.batchnorm(b.conv2d(x, 6, 3, padding=1, groups=3), weights={k: v.astype(np.float32)
                                                                               for k, v in bn_w.items()}))
    d = b.conv2d(h, 6, 3, padding=2, dilation=2, bias=False)
    s = b.add_([h, d])
    s3 = b.add_([h, d, s])
    m = b.maxpool2d(s3, 3, 2, 1, ceil=True)
    a = b.avgpool2d(m, 2, 2, 1, ceil=True, count_include_pad=False)
    a2 = b.avgpool2d(m, 3, 1, 1, count_include_pad=True)
    c = b.concat([b.global_avgpool(a), b.global_avgpool(a2), modern_ops_branch(b, h)])
    f = b.dropout(b.flatten(c), 0.3)
    logits = b.batchnorm(b.linear(f, 5))
    b.output("logits", logits)
    b.output("probs", b.softmax(b.linear(logits, 4, bias=False)))
    return b.build()


# -- export ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_export_of_every_op_runs_in_onnxruntime_like_the_reference_interpreter(opset):
    graph = every_op_graph()
    model = export_model(graph, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert {n.op for n in graph.nodes} == set(OPS)
    feeds = feeds_for(graph, batch=3)
    want = run(graph, feeds)
    got = run_onnx(model, feeds)
    assert set(got) == {"logits", "probs"}
    for key in want:
        assert_close(got[key], want[key], key)


def test_export_keeps_names_and_makes_the_batch_symbolic():
    graph = every_op_graph()
    model = export_model(graph)
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    for vi in list(model.graph.input) + list(model.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param == BATCH
    ir_names = {n.name for n in graph.nodes if n.op != "input"}
    assert ir_names <= {n.name for n in model.graph.node}
    assert {n.op_type for n in model.graph.node} >= {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool",
                                                     "GlobalAveragePool", "Flatten", "Gemm", "Dropout", "Concat",
                                                     "Add", "Sum", "Softmax"}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert helper.get_attribute_value(next(a for a in gemm.attribute if a.name == "transB")) == 1


@pytest.mark.parametrize("op,h,w,out_h,out_w,ceil_mode,pads", [
    ("maxpool2d", 5, 5, 2, 2, 0, [1, 1, 1, 1]),  # ceil adds no window (ONNX's inference would): floor mode
    ("avgpool2d", 6, 6, 3, 3, 1, [1, 1, 1, 1]),  # ceil adds a window on both axes: ceil_mode=1 is sized right
    ("maxpool2d", 6, 5, 3, 2, 0, [1, 1, 2, 1]),  # on H only: the overhang becomes end padding
    ("avgpool2d", 5, 6, 2, 3, 0, [1, 1, 1, 2]),
])
def test_ceil_mode_pools_export_so_that_onnx_shape_inference_agrees(op, h, w, out_h, out_w, ceil_mode, pads):
    # torch, onnxruntime and the IR drop a last window that would start in the right padding; ONNX
    # shape inference (onnx 1.23) does not, and a Flatten + Gemm after the pool then fails full_check.
    extra = ", count_include_pad=false" if op == "avgpool2d" else ""
    graph = parse_graph(f"""
        graph ceil
          x = input() : f32[N,2,{h},{w}]
          pool = {op}(x) {{kernel=(3,3), stride=(3,3), padding=(1,1), ceil=true{extra}}} : f32[N,2,{out_h},{out_w}]
          flat = flatten(pool) : f32[N,{2 * out_h * out_w}]
          fc = linear(flat) {{out=3}} : f32[N,3]
          output y = fc
          output x_again = x
    """)
    model = export_model(graph)
    onnx.checker.check_model(model, full_check=True)
    written = next(n for n in model.graph.node if n.name == "pool")
    attrs = {a.name: helper.get_attribute_value(a) for a in written.attribute}
    assert (attrs["ceil_mode"], attrs["pads"]) == (ceil_mode, pads)
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [BATCH, 3]
    feeds = feeds_for(graph)
    got, want = run_onnx(graph, feeds), run(graph, feeds)
    for key in want:
        assert_close(got[key], want[key], key)
    assert_round_trip(graph)


def test_a_counted_padding_ceil_pool_onnx_cannot_size_is_an_export_error():
    graph = parse_graph("""
        graph ceil
          x = input() : f32[N,1,6,5]
          pool = avgpool2d(x) {kernel=(3,3), stride=(3,3), padding=(1,1), ceil=true, count_include_pad=true} : f32[N,1,3,2]
    """)
    with pytest.raises(OnnxExportError, match=r"node 'pool' \(avgpool2d\): ceil=true on input f32\[N,1,6,5\] "
                                              r"cannot be written so that ONNX shape inference agrees"):
        export_model(graph)


def test_export_rejects_an_opset_older_than_13():
    with pytest.raises(OnnxExportError, match=r"opset 11 is not supported for export \(use 13 to \d+\)"):
        export_model(every_op_graph(), opset=11)


def test_save_onnx_writes_atomically_and_a_failed_export_leaves_no_file(tmp_path):
    graph = every_op_graph()
    path = tmp_path / "net.onnx"
    save_onnx(graph, path, opset=17)
    assert print_graph(load_onnx(path)).splitlines()[1:] == print_graph(graph).splitlines()[1:]
    before = path.read_bytes()
    with pytest.raises(OnnxExportError):
        save_onnx(graph, path, opset=3)
    assert path.read_bytes() == before
    with pytest.raises(OnnxExportError):
        save_onnx(graph, tmp_path / "other.onnx", opset=3)
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]


# -- round trip ------------------------------------------------------------------------------------
def assert_round_trip(graph, opset=17):
    back = import_model(export_model(graph, opset=opset), name=graph.name)
    assert print_graph(back) == print_graph(graph)
    for a, b in zip(graph.nodes, back.nodes):
        assert sorted(a.weights) == sorted(b.weights), a.name
        for key in a.weights:
            assert np.array_equal(a.weights[key], b.weights[key]), f"{a.name}.{key}"


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_export_then_import_gives_the_same_text_form_and_weights(opset):
    assert_round_trip(every_op_graph(), opset)


def test_round_trip_keeps_origins_odd_names_and_shared_outputs():
    graph = parse_graph("""
        graph odd
          "in/0" = input() : f32[N,2,4,4]
          "/layer1/conv/Conv" = conv2d("in/0") {out=3, kernel=(1,1), bias=false} : f32[N,3,4,4]
          deepen_conv = conv2d("/layer1/conv/Conv") {out=3, kernel=(3,3), padding=(1,1)} : f32[N,3,4,4]  # from "/layer1/conv/Conv"
          out = flatten(deepen_conv) : f32[N,48]
          fc = linear(out) {out=2, bias=true} : f32[N,2]
          output out = fc
          output also = fc
          output feats = out
    """)
    assert_round_trip(graph)
    feeds = feeds_for(graph)
    got, want = run_onnx(graph, feeds), run(graph, feeds)
    for key in ("out", "also", "feats"):
        assert_close(got[key], want[key], key)


# -- torch.onnx.export ----------------------------------------------------------------------------
torch = pytest.importorskip("torch")
nn = torch.nn


class ConvBnPoolLinear(nn.Module):
    """conv-bn-relu-pool-flatten-linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class ViewNet(nn.Module):
    """view(N, -1) instead of flatten, a strided conv without bias, and a ceil-mode average pool
    whose last window would start in the padding (torch and onnxruntime drop it, 3x3 -> 2x2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        return self.fc(h.view(h.size(0), -1))


class ResidualCat(nn.Module):
    """Residual add, torch.cat, AdaptiveAvgPool2d(1), dropout, softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.side = nn.Conv2d(4, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.body(h))
        h = torch.cat([h, self.side(h)], 1)
        return torch.softmax(self.fc(self.drop(torch.flatten(self.gap(h), 1))), dim=1)


MODULES = {"conv_bn_pool_linear": ConvBnPoolLinear, "view_net": ViewNet, "residual_cat": ResidualCat}


def make_module(key):
    torch.manual_seed(0)
    module = MODULES[key]()
    for m in module.modules():  # non-trivial statistics, so that batchnorm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return module.eval()


def torch_export(module, x, dynamo, opset, dynamic_batch=False, **kw):
    """An ONNX ModelProto from torch.onnx.export, its console chatter silenced."""
    args = dict(dynamo=dynamo, opset_version=opset, input_names=["image"], output_names=["scores"], **kw)
    if dynamic_batch:
        if dynamo:
            args["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
        else:
            args["dynamic_axes"] = {"image": {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), None if dynamo else buffer, **args)
    return program.model_proto if dynamo else onnx.load_from_string(buffer.getvalue())


@functools.lru_cache(maxsize=None)
def dynamo_unavailable() -> str:
    """Why the torch.export-based exporter cannot run here ('' when it can): only a missing onnxscript (it is
    in the `test` extra). Any other failure is the code under test's, and fails the test instead of skipping."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the installation
        return f"onnxscript is not installed ({e}); pip install -e '.[test]'"
    return ""


def check_against_torch(module, model, batch=3):
    graph = import_model(model)
    assert graph.inputs[0].type.shape[0] == BATCH
    x = torch.randn(batch, *graph.inputs[0].type.sample_shape)
    with torch.no_grad():
        want = module(x).numpy()
    got = run(graph, {"image": x.numpy()})
    assert list(got) == ["scores"]
    assert_close(got["scores"], want, "imported graph vs torch")
    assert_close(run_onnx(graph, {"image": x.numpy()})["scores"], want, "re-exported graph vs torch")
    return graph


# Opsets per exporter: the TorchScript one writes 13 to 21 as asked; the dynamo one writes 18 and
# later (asked for 17 or 13 it falls back to 18: the version converter has no adapter, see the report).
TORCHSCRIPT_CASES = [(key, opset) for key in MODULES for opset in (13, 17, 21)]
DYNAMO_CASES = [(key, opset) for key in MODULES for opset in (18, 21) if key != "view_net" or opset == 18]


@pytest.mark.parametrize("key,opset", TORCHSCRIPT_CASES)
def test_torchscript_export_imports_with_the_modules_eval_output(key, opset):
    module = make_module(key)
    model = torch_export(module, torch.randn(1, 3, 8, 8), dynamo=False, opset=opset)
    check_against_torch(module, model, batch=3)


@pytest.mark.parametrize("key,opset", DYNAMO_CASES)
def test_dynamo_export_imports_with_the_modules_eval_output(key, opset):
    if dynamo_unavailable():
        pytest.skip(f"the dynamo exporter cannot run here: {dynamo_unavailable()}")
    module = make_module(key)
    model = torch_export(module, torch.randn(1, 3, 8, 8), dynamo=True, opset=opset)
    check_against_torch(module, model, batch=3)


def test_torchscript_dynamic_batch_shape_arithmetic_folds_into_a_flatten():
    # With dynamic_axes, view(N, -1) becomes Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    module = make_module("view_net")
    model = torch_export(module, torch.randn(2, 3, 8, 8), dynamo=False, opset=13, dynamic_batch=True)
    assert {"Shape", "Gather", "Unsqueeze", "Concat"} <= {n.op_type for n in model.graph.node}
    graph = check_against_torch(module, model, batch=5)
    assert [n.op for n in graph.nodes].count("flatten") == 1
    assert "/Reshape" in graph


def test_dynamo_dynamic_batch_imports():
    if dynamo_unavailable():
        pytest.skip(f"the dynamo exporter cannot run here: {dynamo_unavailable()}")
    module = make_module("view_net")
    model = torch_export(module, torch.randn(2, 3, 8, 8), dynamo=True, opset=18, dynamic_batch=True)
    check_against_torch(module, model, batch=5)


def test_folded_and_unfolded_conv_batchnorm_both_import():
    module = make_module("conv_bn_pool_linear")
    x = torch.randn(1, 3, 8, 8)
    folded = check_against_torch(module, torch_export(module, x, False, 17, do_constant_folding=True))
    assert "batchnorm" not in [n.op for n in folded.nodes]
    # Unfolded, the TorchScript exporter deduplicates equal initializers through Identity nodes.
    unfolded = check_against_torch(module, torch_export(module, x, False, 17, do_constant_folding=False))
    assert [n.op for n in unfolded.nodes][:4] == ["input", "conv2d", "batchnorm", "relu"]
    assert unfolded.nodes[2].name == "/bn/BatchNormalization"
    if not dynamo_unavailable():  # unoptimised, dynamo keeps the batchnorm and writes shape arithmetic
        raw = torch_export(module, x, True, 18, optimize=False)
        assert "BatchNormalization" in {n.op_type for n in raw.graph.node}
        graph = check_against_torch(module, raw)
        assert "batchnorm" in [n.op for n in graph.nodes]


# -- hand-written ONNX -----------------------------------------------------------------------------
def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def hand_model(nodes, inputs, outputs, initializers=(), opset=13, domains=()):
    graph = helper.make_graph(nodes, "hand", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in dict(initializers).items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 7
    return model


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def check_against_onnxruntime(model, batch=3):
    """Import `model`; compare the IR's reference output with onnxruntime running the file itself (at
    the file's batch size when it fixes one), and the re-exported graph at `batch`."""
    graph = import_model(model, source="hand.onnx")
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    feeds = feeds_for(graph, first.dim_value if first.HasField("dim_value") else batch)
    want = run_onnx(model, feeds)
    got = run(graph, feeds)
    assert list(got) == list(want)
    for key in want:
        assert_close(got[key], want[key], key)
    feeds = feeds_for(graph, batch, seed=1)
    want, got = run(graph, feeds), run_onnx(graph, feeds)
    for key in want:
        assert_close(got[key], want[key], key)
    return graph


def test_gemm_with_transb_0_alpha_and_beta_becomes_one_linear():
    model = hand_model(
        [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc", transB=0, alpha=0.5, beta=2.0)],
        [vi("x", [1, 4])], [vi("y", [1, 3])], {"B": f32(4, 3), "C": f32(1, 3, seed=1)})
    graph = check_against_onnxruntime(model)
    assert print_graph(graph).splitlines()[2] == "  fc = linear(x) {out=3, bias=true} : f32[N,3]"


def test_matmul_plus_constant_add_becomes_a_linear_named_after_the_matmul():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["b", "h"], ["y"], name="bias_add"),  # constant first on purpose
             helper.make_node("MatMul", ["y", "W2"], ["z"], name="mm2")]
    model = hand_model(nodes, [vi("x", ["batch", 4])], [vi("z", ["batch", 2])],
                       {"W": f32(4, 3), "b": f32(3, seed=1), "W2": f32(3, 2, seed=2)})
    graph = check_against_onnxruntime(model)
    assert [(n.name, n.op, n.attrs.get("bias")) for n in graph.nodes] == [
        ("x", "input", None), ("mm", "linear", True), ("mm2", "linear", False)]


def test_conv_plus_constant_add_folds_into_the_conv_bias():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["y"], name="add_bias"),
             helper.make_node("Relu", ["y"], ["r"], name="relu")]
    model = hand_model(nodes, [vi("x", [1, 2, 5, 5])], [vi("r", [1, 3, 5, 5])],
                       {"W": f32(3, 2, 3, 3), "b": f32(1, 3, 1, 1, seed=3)})
    graph = check_against_onnxruntime(model)
    assert [n.name for n in graph.nodes] == ["x", "conv", "relu"]
    assert graph.node("conv").attrs["bias"] is True


def test_same_upper_padding_constant_weights_and_shape_arithmetic_import():
    # Conv weights from a Constant node, auto_pad=SAME_UPPER (symmetric here), unnamed nodes, and the
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape pattern older exporters write.
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(f32(4, 2, 3, 3))),
        helper.make_node("Conv", ["x", "W"], ["c"], auto_pad="SAME_UPPER", strides=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Constant", [], ["minus1"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["p", "shape"], ["flat"], name="view"),
        helper.make_node("Gemm", ["flat", "B"], ["y"], name="fc", transB=1),
        helper.make_node("Softmax", ["y"], ["probs"], name="", axis=-1),
    ]
    model = hand_model(nodes, [vi("x", ["N", 2, 6, 6])], [vi("probs", ["N", 3])], {"B": f32(3, 36)})
    graph = check_against_onnxruntime(model, batch=4)
    assert [(n.name, n.op) for n in graph.nodes] == [
        ("x", "input"), ("Conv_0", "conv2d"), ("Relu_0", "relu"), ("MaxPool_0", "maxpool2d"),
        ("view", "flatten"), ("fc", "linear"), ("Softmax_0", "softmax")]
    assert graph.node("Conv_0").attrs["padding"] == (1, 1)


def test_squeeze_reduce_mean_identity_and_dropout_import():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="layer", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["m", "axes"], ["sq"], name="squeeze"),
        helper.make_node("ReduceMean", ["r"], ["m2"], name="mean2", axes=[-2, -1], keepdims=0),
        helper.make_node("Identity", ["m2"], ["m2id"], name="same"),
        helper.make_node("Concat", ["sq", "m2id"], ["cat"], name="cat", axis=-1),
        helper.make_node("Dropout", ["cat", "ratio"], ["y"], name="drop"),
    ]
    model = hand_model(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", [1, 6])],
                       {"W": f32(3, 2, 1, 1), "axes": np.array([2, 3], np.int64), "ratio": np.float32(0.2)})
    graph = check_against_onnxruntime(model)
    assert [(n.name, n.op) for n in graph.nodes] == [
        ("x", "input"), ("layer", "conv2d"), ("relu", "relu"), ("mean", "global_avgpool"),
        ("squeeze", "flatten"), ("mean2", "global_avgpool"), ("mean2/flatten", "flatten"), ("cat", "concat"),
        ("drop", "dropout")]
    assert graph.node("drop").attrs["p"] == 0.2


def test_a_weight_aliased_by_many_identity_nodes_imports_without_spending_the_folding_budget():
    """Exporters alias a weight they share through Identity nodes (245 in a DenseNet-121). An alias computes and
    makes nothing: 20 aliases of a 1M-element weight import (charged as folds, they exceeded the 16M-element
    budget of a file storing 1M), each layer reading the one weight, and the file runs as onnxruntime runs it."""
    n, layers = 1024, 20
    nodes, value = [], "x"
    for k in range(layers):
        nodes.append(helper.make_node("Identity", ["W"], [f"W{k}"], name=f"alias{k}"))
        nodes.append(helper.make_node("MatMul", [value, f"W{k}"], [f"h{k}"], name=f"layer{k}"))
        value = f"h{k}"
    weight = (np.eye(n) + 1e-3 * f32(n, n)).astype(np.float32)
    model = hand_model(nodes, [vi("x", [1, n])], [vi(value, [1, n])], {"W": weight})
    graph = check_against_onnxruntime(model)
    layers_read = [node for node in graph.nodes if node.op == "linear"]
    assert len(layers_read) == layers
    assert all(np.array_equal(node.weights["weight"], weight.T) for node in layers_read)


def test_repeated_and_missing_node_names_are_made_unique():
    # onnxruntime refuses repeated node names, the ONNX checker does not: import them anyway.
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="block"),
             helper.make_node("Relu", ["a"], ["b"], name="block"),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Relu", ["c"], ["d"], name="Relu_0"),
             helper.make_node("Relu", ["d"], ["e"])]
    graph = import_model(hand_model(nodes, [vi("x", [1, 4])], [vi("e", [1, 4])]))
    assert [n.name for n in graph.nodes] == ["x", "block", "block_2", "Relu_1", "Relu_0", "Relu_2"]
    assert dict(graph.outputs) == {"e": "Relu_2"}


# -- errors ----------------------------------------------------------------------------------------
def small_model_bytes():
    b = GraphBuilder("small")
    x = b.input("x", (3, 8, 8))
    b.output("y", b.linear(b.flatten(b.relu(b.conv2d(x, 4, 3))), 3))
    return export_model(b.build()).SerializeToString()


def test_truncated_file_is_not_an_onnx_model(tmp_path):
    data = small_model_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError, match=r"model\.onnx: not an ONNX model \(it does not parse as one: .*"
                                              r"is the file truncated\?\)$"):
        load_onnx(path)
    path.write_bytes(b"")
    with pytest.raises(OnnxImportError, match=r"model\.onnx: not an ONNX model \(the file is empty\)"):
        load_onnx(path)


def test_non_onnx_bytes_are_not_an_onnx_model(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(OnnxImportError, match=r"model\.onnx: not an ONNX model \("):
        load_onnx(path)
    with pytest.raises(OnnxImportError, match=r"missing\.onnx: cannot read \("):
        load_onnx(tmp_path / "missing.onnx")
    assert issubclass(OnnxImportError, IRError)


def test_a_model_is_parsed_from_a_map_of_the_file_or_read_from_a_pipe_and_the_file_is_left_free(tmp_path):
    import threading

    data = small_model_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    graph = load_onnx(path)
    os.replace(tmp_path / "model.onnx", tmp_path / "moved.onnx")  # nothing of it is held open or mapped
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.exists():
        assert "moved.onnx" not in maps.read_text() and "model.onnx" not in maps.read_text()
    pipe = tmp_path / "pipe.onnx"  # cannot be mapped: read
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(data))
    writer.start()
    try:
        piped = load_onnx(pipe)
    finally:
        writer.join()
    assert [n.name for n in piped.nodes] == [n.name for n in graph.nodes]
    for a, b in zip(piped.nodes, graph.nodes):
        for key in a.weights:
            np.testing.assert_array_equal(a.weights[key], b.weights[key])


def test_unsupported_operator_is_named_with_its_node(tmp_path):
    hidden = 3
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["all", "last"], name="/rnn/LSTM", hidden_size=hidden)]
    model = hand_model(nodes, [vi("x", [5, 1, 4])], [vi("last", [1, 1, hidden])],
                       {"W": f32(1, 4 * hidden, 4), "R": f32(1, 4 * hidden, hidden)})
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: operator 'LSTM' (node '/rnn/LSTM') is not supported by easc "
                              "(supported: Add, AveragePool, BatchNormalization,")
    assert "\n" not in message


def test_asymmetric_pads_are_an_error_naming_the_node():
    model = hand_model([helper.make_node("Conv", ["x", "W"], ["y"], name="/stem/Conv", pads=[0, 0, 1, 1])],
                       [vi("x", [1, 2, 5, 5])], [vi("y", [1, 3, 5, 5])], {"W": f32(3, 2, 2, 2)})
    with pytest.raises(OnnxImportError, match=r"^model\.onnx: node '/stem/Conv' \(Conv\): asymmetric padding "
                                              r"\(pads \[0, 0, 1, 1\]\) cannot be represented"):
        import_model(model, source="model.onnx")
    same = hand_model([helper.make_node("Conv", ["x", "W"], ["y"], name="c", auto_pad="SAME_UPPER")],
                      [vi("x", [1, 2, 5, 5])], [vi("y", [1, 3, 5, 5])], {"W": f32(3, 2, 2, 2)})
    with pytest.raises(OnnxImportError, match=r"node 'c' \(Conv\): asymmetric padding \(auto_pad=SAME_UPPER "
                                              r"gives pads \[0, 0, 1, 1\]\)"):
        import_model(same, source="model.onnx")


def test_a_constant_added_to_a_non_layer_and_a_batch_mixing_reshape_are_errors():
    relu_add = hand_model([helper.make_node("Relu", ["x"], ["r"], name="act"),
                           helper.make_node("Add", ["r", "c"], ["y"], name="shift")],
                          [vi("x", [1, 3])], [vi("y", [1, 3])], {"c": f32(3)})
    with pytest.raises(OnnxImportError, match=r"node 'shift' \(Add\): adding a constant to an activation is "
                                              r"supported only as the bias of a Conv, Gemm or MatMul"):
        import_model(relu_add, source="m.onnx")
    mixing = hand_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="merge")],
                        [vi("x", ["N", 2, 3])], [vi("y", [-1])], {"s": np.array([-1], np.int64)})
    with pytest.raises(OnnxImportError,
                       match=r"node 'merge' \(Reshape\): reshape \[N,2,3\] to \[-1\] mixes the batch "):
        import_model(mixing, source="m.onnx")


def test_unsqueeze_then_squeeze_of_an_activation_is_removed():
    nodes = [helper.make_node("Gemm", ["x", "B"], ["y"], name="fc", transB=1),
             helper.make_node("Unsqueeze", ["y", "axes"], ["y4"], name="unsq"),
             helper.make_node("Squeeze", ["y4", "axes"], ["y2"], name="sq"),
             helper.make_node("Relu", ["y2"], ["r"], name="relu")]
    model = hand_model(nodes, [vi("x", ["N", 4])], [vi("r", ["N", 3])],
                       {"B": f32(3, 4), "axes": np.array([2, 3], np.int64)})
    graph = check_against_onnxruntime(model)
    assert [n.name for n in graph.nodes] == ["x", "fc", "relu"]


def _conv(name="conv", inputs=("x", "W"), **attrs):
    return helper.make_node("Conv", list(inputs), ["c"], name=name, **attrs)


X4 = [vi("x", [1, 2, 4, 4])]
C4 = [vi("c", [1, 3, 4, 4])]
W = {"W": f32(3, 2, 1, 1)}

# (test id, model, the message after "bad.onnx: ") for import errors not tested above.
BAD_MODELS = [
    ("custom-domain", hand_model([helper.make_node("FusedConv", ["x"], ["c"], name="fc", domain="com.microsoft")],
                                 X4, C4, domains=["com.microsoft"]),
     r"operator 'com\.microsoft::FusedConv' \(node 'fc'\) is not supported by easc \(supported: "),
    ("dynamic-spatial-dim", hand_model([_conv()], [vi("x", [1, 2, "H", 4])], C4, W),
     r"graph input 'x' has a dynamic dimension 'H' after the batch; easc needs fixed sample shapes"),
    ("integer-input", hand_model([], [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 2])],
                                 [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 2])]),
     r"graph input 'x' is INT64; easc imports float32 networks"),
    ("concat-axis-2", hand_model([helper.make_node("Concat", ["x", "x"], ["c"], name="cat", axis=2)],
                                 X4, [vi("c", [1, 2, 8, 4])]),
     r"node 'cat' \(Concat\): only concatenation along the channel axis \(axis=1\) is supported, got axis=2"),
    ("softmax-axis-0", hand_model([helper.make_node("Softmax", ["x"], ["c"], name="sm", axis=0)],
                                  [vi("x", [1, 5])], [vi("c", [1, 5])]),
     r"node 'sm' \(Softmax\): only softmax over the class axis of an \(N, C\) value is supported"),
    ("dilated-pool", hand_model([helper.make_node("MaxPool", ["x"], ["c"], name="mp", kernel_shape=[2, 2],
                                                  dilations=[2, 2])], X4, [vi("c", [1, 2, 2, 2])]),
     r"node 'mp' \(MaxPool\): dilated pooling \(dilations=\[2, 2\]\) is not supported"),
    ("pool-indices", hand_model([helper.make_node("MaxPool", ["x"], ["c", "idx"], name="mp", kernel_shape=[2, 2])],
                                X4, [vi("c", [1, 2, 3, 3]),
                                     helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 2, 3, 3])]),
     r"node 'mp' \(MaxPool\): its indices output 'idx' is used"),
    ("gemm-transA", hand_model([helper.make_node("Gemm", ["x", "B"], ["c"], name="fc", transA=1)],
                               [vi("x", [4, 1])], [vi("c", [1, 3])], {"B": f32(4, 3)}),
     r"node 'fc' \(Gemm\): transA=1 is not supported"),
    ("bn-training", hand_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["c"], name="bn",
                                                 training_mode=1)], X4, [vi("c", [1, 2, 4, 4])],
                               {k: np.ones(2, np.float32) for k in "sbmv"}, opset=15),
     r"node 'bn' \(BatchNormalization\): training_mode=1 is not supported \(export the model in eval mode\)"),
    ("conv-1d", hand_model([_conv()], [vi("x", [1, 2, 4])], [vi("c", [1, 3, 4])], {"W": f32(3, 2, 1)}),
     r"node 'conv' \(Conv\): only 2-D convolutions are supported"),
    ("conv-weight-from-input", hand_model([_conv()], X4 + [vi("W", [3, 2, 1, 1])], C4),
     r"node 'conv' \(Conv\): weight 'W' must be a constant \(an initializer or a Constant node\)"),
    ("bias-of-shared-conv", hand_model([_conv(), helper.make_node("Add", ["c", "b"], ["y"], name="bias"),
                                        helper.make_node("Add", ["y", "c"], ["z"], name="sum")],
                                       X4, [vi("z", [1, 3, 4, 4])], {**W, "b": f32(3, 1, 1)}),
     r"node 'bias' \(Add\): adding a constant .* \('c' is also read elsewhere, so the bias cannot be folded"),
    ("opset-8", hand_model([_conv()], X4, C4, W, opset=8),
     r"opset 8 is too old \(easc reads opset 9 and later"),
    ("constant-output", hand_model([helper.make_node("Relu", ["x"], ["r"], name="r"),
                                    helper.make_node("Constant", [], ["k"], name="k",
                                                     value=numpy_helper.from_array(f32(2)))],
                                   [vi("x", [1, 2])], [vi("r", [1, 2]), vi("k", [2])]),
     r"graph output 'k' is a constant \(it does not depend on the graph's inputs\)"),
    ("reshape-fixes-batch-1", hand_model([helper.make_node("Reshape", ["x", "s"], ["c"], name="view")],
                                         [vi("x", ["N", 2, 4, 4])], [vi("c", [1, 32])],
                                         {"s": np.array([1, -1], np.int64)}),
     r"node 'view' \(Reshape\): target shape \[1,-1\] does not keep the batch first \(its first entry is "
     r"neither -1, 0 nor the batch size\)"),
    ("reshape-batch-times-channels", hand_model(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("Mul", ["s", "two"], ["s2"], name="twice"),
         helper.make_node("Reshape", ["x", "s2"], ["c"], name="view")],
        [vi("x", ["N", 2])], [vi("c", ["M", 4])], {"two": np.array([2, 1], np.int64)}),
     r"node 'view' \(Reshape\): target shape entry 0 depends on the batch size in a way easc cannot follow"),
    ("flatten-axis-2", hand_model([helper.make_node("Flatten", ["x"], ["c"], name="fl", axis=2)],
                                  X4, [vi("c", [2, 16])]),
     r"node 'fl' \(Flatten\): axis=2 is not supported \(easc flattens all but the batch, axis=1\)"),
    ("rank-3-view-used", hand_model([helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsq"),
                                     helper.make_node("Relu", ["u"], ["c"], name="relu")],
                                    [vi("x", [1, 3])], [vi("c", [1, 3, 1])], {"ax": np.array([2], np.int64)}),
     r"node 'relu' \(Relu\): input 'u' has shape \[N,3,1\], which easc cannot represent"),
]


@pytest.mark.parametrize("model,message", [case[1:] for case in BAD_MODELS], ids=[case[0] for case in BAD_MODELS])
def test_import_errors_name_the_file_and_node(model, message):
    with pytest.raises(OnnxImportError) as info:
        import_model(model, source="bad.onnx")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("bad.onnx: ")
    assert re.search(message, text[len("bad.onnx: "):]), text


def test_load_onnx_reads_external_weights_next_to_the_file(tmp_path):
    graph = every_op_graph()
    onnx.save(export_model(graph), tmp_path / "net.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="net.weights", size_threshold=0)
    back = load_onnx(tmp_path / "net.onnx")
    assert back.name == "net"
    for a, b in zip(graph.nodes, back.nodes):
        for key in a.weights:
            assert np.array_equal(a.weights[key], b.weights[key]), f"{a.name}.{key}"
