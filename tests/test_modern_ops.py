"""The ops of mobile networks: each one's semantics, its round trips, and the passes through it.

clip (ReLU6), leaky_relu, sigmoid, silu, hardsigmoid, hardswish, pad, slice (a channel split),
channel_shuffle and mul (a squeeze-excitation gate) must mean the same thing in the reference interpreter,
in `to_module`, in the exported PyTorch source, in ONNX (written by easc and by both torch exporters) and
after `from_module`; they round-trip through the text form and `.easir`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easc.backends.onnx import OnnxImportError, export_model, import_model, run_onnx
from easc.backends.torch import export_torch_source, from_module, to_module
from easc.ir import (GraphBuilder, graph_from_bytes, graph_to_bytes, parse_graph, print_graph, probe_inputs, run,
                     value_ranges)
from easc.passes.base import checked
from easc.passes.deepen import deepen
from onnx_export import export_onnx

RTOL = 1e-5


def modern_graph():
    """Every mobile-network op on a small NCHW value, with a per-channel gate and a channel split."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("modern", rng=rng)
    x = b.input("x", (4, 7, 7))
    h = b.add("clip", [b.batchnorm(b.conv2d(x, 6, 1))], {"min": 0.0, "max": 6.0})
    h = b.add("hardswish", [b.conv2d(h, 6, 3, padding=1, groups=6)])
    gate = b.add("sigmoid", [b.conv2d(b.add("silu", [b.conv2d(b.global_avgpool(h), 2, 1)]), 6, 1)])
    h = b.add("mul", [h, gate])
    h = b.add("channel_shuffle", [b.add("pad", [h], {"pads": (0, 1, 2, 1), "value": -0.5})], {"groups": 3})
    a, c = b.add("slice", [h], {"start": 0, "end": 2}), b.add("slice", [h], {"start": 2, "end": 6})
    c = b.add("leaky_relu", [b.conv2d(c, 4, 1)], {"slope": 0.2})
    h = b.concat([a, b.add("hardsigmoid", [c]), b.add("clip", [c], {"min": -0.5, "max": 0.25})])
    b.output("y", b.linear(b.flatten(b.global_avgpool(h)), 5))
    from easc.ir.builder import randomise_weights

    return randomise_weights(b.build(), np.random.default_rng(1))


def _close(want, got, what):
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err <= RTOL * (1 + float(np.abs(want).max())), f"{what}: max |diff| {err:.3g}"


def _torch_out(module, feeds, graph):
    with torch.no_grad():
        return module.eval()(*[torch.from_numpy(feeds[n.name]) for n in graph.inputs]).numpy()


def test_every_mobile_op_means_the_same_in_the_interpreter_torch_exported_code_and_onnx(tmp_path):
    graph = modern_graph()
    feeds = probe_inputs(graph, batch=3)
    want = run(graph, feeds)["y"]
    _close(want, _torch_out(to_module(graph), feeds, graph), "to_module")
    result = export_torch_source(graph, tmp_path)  # checks the source against to_module before writing
    spec = importlib.util.spec_from_file_location("modern_export", result.model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _close(want, _torch_out(mod.load(), feeds, graph), "exported source")
    source = result.model_py.read_text()
    for line in ("nn.ReLU6()", "nn.Hardswish()", "nn.ChannelShuffle(3)", "nn.ConstantPad2d((1, 1, 0, 2), -0.5)",
                 "nn.LeakyReLU(0.2)", "nn.Hardtanh(-0.5, 0.25)", "[:, 0:2]", " * "):
        assert line in source, line
    for opset in (13, 17):
        _close(want, run_onnx(export_model(graph, opset), feeds)["y"], f"onnxruntime, opset {opset}")


def test_mobile_ops_round_trip_through_text_easir_and_onnx():
    graph = modern_graph()
    assert print_graph(parse_graph(print_graph(graph))) == print_graph(graph)
    again = graph_from_bytes(graph_to_bytes(graph))
    assert print_graph(again) == print_graph(graph)
    for opset in (13, 17):
        back = import_model(export_model(graph, opset))
        assert print_graph(back).splitlines()[1:] == print_graph(graph).splitlines()[1:]
        feeds = probe_inputs(graph)
        _close(run(graph, feeds)["y"], run(back, feeds)["y"], "ONNX round trip")


class Mobile(nn.Module):
    """The forms people write: ReLU6, x * sigmoid(x), a gate, chunk, the view-transpose-view shuffle, F.pad."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu6(self.bn(self.conv(x)))
        h = self.dw(h)
        h = h * torch.sigmoid(h)
        g = F.hardsigmoid(self.fc2(F.silu(self.fc1(h.mean((2, 3), keepdim=True)))))
        h = F.hardswish(h * g)
        a, b = h.chunk(2, dim=1)
        h = torch.cat([a, F.leaky_relu(self.branch(b), 0.1)], 1)
        n, c, hh, ww = h.size()
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(n, -1, hh, ww)
        h = F.hardtanh(F.pad(h, (1, 0, 0, 1)), -1.0, 2.0)
        return self.head(h.mean([2, 3]))


def _mobile():
    torch.manual_seed(0)
    m = Mobile().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("route", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow), "fx"])
def test_mobile_forms_of_both_torch_exporters_and_from_module_lower_to_the_ir_ops(route):
    model, x = _mobile(), torch.randn(2, 3, 8, 8)
    graph = from_module(model, x) if route == "fx" else import_model(export_onnx(model, x, route == "dynamo"))
    ops = {n.op for n in graph.nodes}
    assert {"clip", "silu", "mul", "hardsigmoid", "hardswish", "slice", "channel_shuffle", "pad",
            "leaky_relu"} <= ops, ops
    assert "sigmoid" not in ops  # x * sigmoid(x) became one silu
    dw = next(n for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] == 8)
    assert dw.width == 8
    with torch.no_grad():
        want = model(x).numpy()
    _close(want, run(graph, {graph.inputs[0].name: x.numpy()})["output" if route == "fx" else graph.outputs and
                                                                 next(iter(graph.outputs))], route)


def test_an_operator_outside_the_set_is_refused_in_one_line_naming_it_the_node_and_the_set():
    class Tanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    model = export_onnx(Tanh(), torch.randn(1, 3, 4, 4), dynamo=False)
    with pytest.raises(OnnxImportError) as err:
        import_model(model, "m.onnx")
    message = str(err.value)
    assert "\n" not in message and "operator 'Tanh' (node '" in message
    assert "supported: " in message and "HardSwish" in message and "Clip" in message


def test_range_analysis_bounds_activations_and_propagates_through_pooling_and_products():
    g = parse_graph("""
graph ranges
  x = input() : f32[N,2,4,4]
  relu6 = clip(x) {min=0.0, max=6.0} : f32[N,2,4,4]
  pool = maxpool2d(relu6) {kernel=2} : f32[N,2,2,2]
  hs = hardswish(x) : f32[N,2,4,4]
  sig = sigmoid(x) : f32[N,2,4,4]
  gated = mul(relu6, sig) : f32[N,2,4,4]
  padded = pad(relu6) {pads=(1,1,1,1), value=-1.0} : f32[N,2,6,6]
  total = add(relu6, relu6) : f32[N,2,4,4]
  output y = total
""")
    r = value_ranges(g)
    assert r["relu6"] == r["pool"] == (0.0, 6.0)
    assert r["hs"][0] == -0.375 and r["hs"][1] == float("inf")
    assert r["sig"] == (0.0, 1.0) and r["gated"] == (0.0, 6.0)
    assert r["padded"] == (-1.0, 6.0) and r["total"] == (0.0, 12.0)


MOBILE_BLOCK = """
graph block
  x = input() : f32[N,3,6,6]
  conv_1 = conv2d(x) {out=4, kernel=1} : f32[N,4,6,6]
  relu6_1 = clip(conv_1) {min=0.0, max=6.0} : f32[N,4,6,6]
  pool_1 = maxpool2d(relu6_1) {kernel=2} : f32[N,4,3,3]
  hs_1 = hardswish(pool_1) : f32[N,4,3,3]
  conv_2 = conv2d(hs_1) {out=4, kernel=1} : f32[N,4,3,3]
  flatten_1 = flatten(conv_2) : f32[N,36]
  fc_1 = linear(flatten_1) {out=2} : f32[N,2]
  output y = fc_1
"""


def test_deepen_after_relu6_adds_relu6_where_the_range_analysis_allows_it_and_nothing_after_hardswish():
    g = parse_graph(MOBILE_BLOCK)
    result = checked(g, deepen(g, "relu6_1"))
    added = result.graph.node("deepen_relu6_1_clip")
    assert (added.op, added.attrs["min"], added.attrs["max"]) == ("clip", 0.0, 6.0)
    assert any("lies in [0, 6], where clip is the identity" in line for line in result.changes)
    result = checked(g, deepen(g, "pool_1"))  # a pool of ReLU6 values is non-negative: relu
    assert result.graph.node("deepen_pool_1_relu").op == "relu"
    result = checked(g, deepen(g, "hs_1"))
    assert "no activation: hardswish is the identity on no interval, so after hs_1 the block has none" \
        in result.changes
    assert [n.op for n in result.graph.nodes].count("hardswish") == 1


class GroupedSE(nn.Module):
    """A RegNetY-style block: 1x1, grouped 3x3 (groups 2), squeeze-excitation, 1x1, residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU6())
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(6), nn.SiLU())
        self.se1, self.se2 = nn.Conv2d(6, 2, 1), nn.Conv2d(2, 6, 1)
        self.c = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        h = self.b(self.a(x))
        h = h * torch.sigmoid(self.se2(torch.relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
        x = torch.relu(x + self.c(h))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_easc_transform_widens_deepens_and_skips_through_a_grouped_squeeze_excitation_block(tmp_path):
    from click.testing import CliRunner

    from easc.cli.main import main

    model, x = GroupedSE().eval(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "block.onnx"
    onnx.save(export_onnx(model, x, dynamo=False), str(path))
    graph = import_model(onnx.load(str(path)))
    relu6 = next(n.name for n in graph.nodes if n.op == "clip")
    silu = next(n.name for n in graph.nodes if n.op == "silu")
    last_conv = [n.name for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] == 1][-1]
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["transform", str(path), "--widen", "--factor", "1.5", "--deepen", relu6,
                                       "--skip", f"{silu}:{last_conv}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "every group alike" not in result.output  # 1.5 x 6 = 9 was rounded up to 10 for the 2 groups
    assert f"deepen_{relu6}_clip: clip" in result.output
    new = import_model(onnx.load(str(out)))
    grouped = next(n for n in new.nodes if n.op == "conv2d" and n.attrs["groups"] == 2)
    assert grouped.width == 10 and grouped.attrs["groups"] == 2
    with torch.no_grad():
        want = model(x).numpy()
    _close(want, next(iter(run_onnx(new, {new.inputs[0].name: x.numpy()}).values())), "transformed block")


def test_silu_is_read_from_onnx_swish_and_a_swish_with_another_alpha_is_refused():
    from onnx import TensorProto, helper

    def model(alpha):
        node = helper.make_node("Swish", ["x"], ["y"], name="act", alpha=alpha)
        g = helper.make_graph([node], "swish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 24)])

    graph = import_model(model(1.0))
    assert [n.op for n in graph.nodes] == ["input", "silu"]
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    _close(F.silu(torch.from_numpy(x)).numpy(), run(graph, {"x": x})["y"], "swish")
    with pytest.raises(OnnxImportError, match=r"node 'act' \(Swish\): Swish with alpha=0.5 is not supported"):
        import_model(model(0.5))


ACTS = ("relu", "clip", "hardswish", "silu", "leaky_relu", "sigmoid", "hardsigmoid")


def _act(b, x, kind):
    attrs = {"clip": {"min": 0.0, "max": 6.0}, "leaky_relu": {"slope": 0.1}}.get(kind, {})
    return b.add(kind, [x], attrs)


def _random_mobile_graph(data):
    """An inverted-residual block with random activations, depthwise or grouped conv, optional SE and add."""
    from hypothesis import strategies as st

    from easc.ir.builder import randomise_weights

    b = GraphBuilder("block", rng=np.random.default_rng(data.draw(st.integers(0, 100))))
    c0 = data.draw(st.sampled_from([4, 6]))
    e = data.draw(st.sampled_from([4, 8]))
    x = b.input("x", (3, 6, 6))
    h0 = _act(b, b.batchnorm(b.conv2d(x, c0, 3, padding=1)), data.draw(st.sampled_from(ACTS)))
    h = _act(b, b.batchnorm(b.conv2d(h0, e, 1)), data.draw(st.sampled_from(ACTS)))
    groups = data.draw(st.sampled_from([e, 2]))
    h = _act(b, b.batchnorm(b.conv2d(h, e, 3, padding=1, groups=groups)), data.draw(st.sampled_from(ACTS)))
    if data.draw(st.booleans()):
        s = _act(b, b.conv2d(b.global_avgpool(h), 2, 1), data.draw(st.sampled_from(ACTS)))
        h = b.add("mul", [h, b.add(data.draw(st.sampled_from(["sigmoid", "hardsigmoid"])), [b.conv2d(s, e, 1)])])
    h = b.batchnorm(b.conv2d(h, c0, 1))
    if data.draw(st.booleans()):
        h = b.add_([h, h0])
    b.output("y", b.linear(b.flatten(b.global_avgpool(h)), 3))
    return randomise_weights(b.build(), np.random.default_rng(1))


def test_random_mobile_blocks_stay_exact_under_widen_and_deepen_and_round_trip_through_onnx():
    from hypothesis import given, settings, strategies as st

    from easc.passes.widen import widen, widen_reason
    from easc.passes.channels import trace_channels

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(st.data())
    def check(data):
        graph = _random_mobile_graph(data)
        back = import_model(export_model(graph))
        assert print_graph(back).splitlines()[1:] == print_graph(graph).splitlines()[1:]
        layer = data.draw(st.sampled_from([n.name for n in graph.layers()]))
        if widen_reason(graph, layer) is None:
            n, groups = graph.node(layer).width, trace_channels(graph, layer).groups
            checked(graph, widen(graph, layer, n + groups * data.draw(st.integers(1, 3)),
                                 rng=np.random.default_rng(0)))
        acts = [n.name for n in graph.nodes if n.op in ACTS and graph.consumers(n.name)
                and n.type.rank == 4]
        checked(graph, deepen(graph, data.draw(st.sampled_from(acts))))

    check()


class LinearSE(nn.Module):
    """The original SENet form: pooled features through two Linear layers, viewed back as (N, C, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, c, _, _ = x.size()
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = torch.sigmoid(self.fc2(torch.relu(self.fc1(y)))).view(b, c, 1, 1)
        return self.head(x * y.expand_as(x)).mean((2, 3))


@pytest.mark.parametrize("route", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow), "fx"])
def test_a_squeeze_excitation_gate_of_linear_layers_imports_widens_and_exports(route, tmp_path):
    from easc.passes.widen import widen

    torch.manual_seed(0)
    model, x = LinearSE().eval(), torch.randn(2, 3, 6, 6)
    graph = from_module(model, x) if route == "fx" else import_model(export_onnx(model, x, route == "dynamo"))
    mul = next(n for n in graph.nodes if n.op == "mul")
    assert graph.node(mul.inputs[1]).type.rank == 2  # the (N, C) gate, broadcast per channel
    with torch.no_grad():
        want = model(x).numpy()
    out = next(iter(graph.outputs))
    _close(want, run(graph, {graph.inputs[0].name: x.numpy()})[out], route)
    conv = graph.layers()[0].name
    result = checked(graph, widen(graph, conv, 12, rng=np.random.default_rng(0)))
    wide = result.graph
    assert print_graph(import_model(export_model(wide))).splitlines()[1:] == print_graph(wide).splitlines()[1:]
    feeds = {wide.inputs[0].name: x.numpy()}
    _close(want, run_onnx(wide, feeds)[out], f"{route}, widened, in onnxruntime")
    _close(want, _torch_out(to_module(wide), feeds, wide), f"{route}, widened, to_module")
    export_torch_source(wide, tmp_path)  # checked against to_module before it is written
    assert "[:, :, None, None]" in (tmp_path / "model.py").read_text()


def test_skip_runs_from_a_gated_value_into_a_conv_and_refuses_a_depthwise_destination_with_its_reason():
    from easc.passes.base import PassError
    from easc.passes.skip import skip

    graph = modern_graph()
    shuffle = next(n.name for n in graph.nodes if n.op == "channel_shuffle")
    project = [n.name for n in graph.nodes if n.op == "conv2d"][-1]  # the 1x1 after the channel split
    result = checked(graph, skip(graph, shuffle, project))
    assert any(line.startswith(f"{project}: reads") for line in result.changes)
    mul = next(n.name for n in graph.nodes if n.op == "mul")
    head = graph.layers()[-1].name  # the linear classifier: the gated value arrives pooled and flattened
    result = checked(graph, skip(graph, mul, head))
    assert any("global average pooling" in line for line in result.changes)
    depthwise = next(n.name for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] > 1)
    first = graph.nodes[1].name
    with pytest.raises(PassError, match=rf"{depthwise} is a grouped conv \(groups=6\); the new input channels "
                                        r"would have to be split across its groups"):
        skip(graph, first, depthwise)


def test_every_ir_op_has_a_kernel_and_a_backend_lowering():
    from easc.backends.optable import LOWERINGS
    from easc.ir import OPS

    assert all(spec.kernel is not None for name, spec in OPS.items() if name != "input")
    assert set(LOWERINGS) == set(OPS) - {"input"}
    for low in LOWERINGS.values():  # a layer or an expression in torch, never both
        assert (low.module is not None) != (low.fx is not None) and (low.code is not None) != (low.expr is not None)


@pytest.mark.parametrize("stride, dilation, kernel", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 1, 5), (2, 1, 5)])
def test_a_large_depthwise_conv_summed_over_kernel_offsets_is_torchs_conv(stride, dilation, kernel):
    """Above `DEPTHWISE_SHIFTED` window elements the interpreter sums a depthwise conv over its kernel offsets
    instead of contracting copied windows with einsum: both give torch's float64 conv."""
    from easc.ir import kernels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 64, 64))
    w = rng.standard_normal((64, 1, kernel, kernel))
    b = rng.standard_normal(64)
    pad = dilation * (kernel // 2)
    args = (x, w, b, (stride, stride), (pad, pad), (dilation, dilation), 64)
    windows = x.shape[0] * 64 * (-(-64 // stride)) ** 2 * kernel * kernel
    assert windows > kernels.DEPTHWISE_SHIFTED  # the summed path
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, pad, dilation, 64).numpy()
    got = kernels.conv2d_array(*args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    original = kernels.DEPTHWISE_SHIFTED
    try:
        kernels.DEPTHWISE_SHIFTED = 10 ** 12  # the einsum path on the same input
        np.testing.assert_allclose(kernels.conv2d_array(*args), got, rtol=1e-12, atol=1e-12)
    finally:
        kernels.DEPTHWISE_SHIFTED = original
