"""Widening through channel shuffles, gathers and splits that cut the channels (ShuffleNet units).

The channels of a widened layer reach a shuffle, are interleaved with others, and the next unit's split keeps
some of them in each half. `widen` must stay exact: every value downstream holds exactly its old channels plus
copies of them; a shuffle whose groups become unequal turns into a `channel_gather`. Outputs are compared in the
reference interpreter (`checked`) and in onnxruntime; the new op round-trips through text, ONNX and PyTorch.
"""

from __future__ import annotations

import importlib.util
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from easc.backends.onnx import OnnxImportError, export_model, import_model, run_onnx
from easc.backends.torch import TorchImportError, export_torch_source, from_module, to_module
from easc.backends.torch.zoo import ShuffleNetV2
from easc.ir import Graph, GraphBuilder, parse_graph, print_graph, probe_inputs, run
from easc.ir.builder import randomise_weights
from easc.passes.base import checked
from easc.passes.channels import Scatter, trace_channels
from easc.passes.widen import widen, widen_reason

RTOL = 1e-5


def _close(want, got, what):
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err <= RTOL * (1 + float(np.abs(want).max())), f"{what}: max |diff| {err:.3g}"


def _onnx_matches(graph, want, feeds, what):
    _close(want, next(iter(run_onnx(graph, feeds).values())), f"{what}, onnxruntime")


def _unit(b, x, channels, split, groups, stride):
    """A ShuffleNetV2-style unit: split the channels at `split` (stride 1) or read them all twice (stride 2),
    a conv-dw-conv branch, concat, shuffle."""
    if stride == 1:
        keep, x2 = b.add("slice", [x], {"start": 0, "end": split}), b.add("slice", [x], {"start": split, "end": channels})
        cin, out = channels - split, channels - split
    else:
        keep = b.add("relu", [b.batchnorm(b.conv2d(b.conv2d(x, channels, 3, stride=2, padding=1, groups=channels),
                                                   split, 1))])
        x2, cin, out = x, channels, channels - split
    h = b.add("relu", [b.batchnorm(b.conv2d(x2, out, 1))])
    h = b.batchnorm(b.conv2d(h, out, 3, stride=stride, padding=1, groups=out))
    h = b.add("relu", [b.batchnorm(b.conv2d(h, out, 1))])
    return b.add("channel_shuffle", [b.concat([keep, h])], {"groups": groups})


@st.composite
def shuffle_nets(draw):
    """A stem, 1-3 random shuffle units (split point, shuffle groups, stride) and a classifier."""
    channels = draw(st.sampled_from([4, 6, 8]))
    b = GraphBuilder("shuffle", rng=np.random.default_rng(0))
    x = b.input("x", (3, 8, 8))
    h = b.add("relu", [b.batchnorm(b.conv2d(x, channels, 3, padding=1))])
    for _ in range(draw(st.integers(1, 3))):
        split = draw(st.integers(1, channels - 1))
        groups = draw(st.sampled_from([g for g in (2, 3, 4) if channels % g == 0]))
        h = _unit(b, h, channels, split, groups, draw(st.sampled_from([1, 1, 2])) if h.startswith("channel") else 1)
    b.output("y", b.linear(b.flatten(b.global_avgpool(h)), 3))
    return randomise_weights(b.build(), np.random.default_rng(draw(st.integers(0, 2**16))))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shuffle_nets(), st.data())
def test_widening_any_layer_of_random_shuffle_units_twice_is_exact_in_the_interpreter_and_onnxruntime(graph, data):
    feeds = probe_inputs(graph, batch=2)
    want = run(graph, feeds)["y"]
    layers = [n.name for n in graph.layers() if widen_reason(graph, n.name) is None]
    assert graph.layers()[-1].name not in layers  # the classifier: its width is the output's
    for node in graph.layers():  # nothing refused but the classifier and the depthwise convs
        reason = widen_reason(graph, node.name)
        assert node.name in layers or "depthwise" in reason or "graph output" in reason, reason
    current = graph
    for _ in range(2):  # the second widening goes through the gathers the first one made
        layer = data.draw(st.sampled_from(layers))
        extra = data.draw(st.integers(1, 5))
        seed = data.draw(st.integers(0, 2**16))
        result = checked(current, widen(current, layer, current.node(layer).width + extra,
                                        rng=np.random.default_rng(seed)))
        current = result.graph
        _close(want, run(current, feeds)["y"], f"widen {layer}, interpreter")
    _onnx_matches(current, want, feeds, "after two widenings")
    back = import_model(export_model(current))
    assert [n.op for n in back.nodes] == [n.op for n in current.nodes]
    _close(want, run(back, feeds)["y"], "after an ONNX round trip")


@st.composite
def rearranging_nets(draw):
    """Shuffles, permutations, cutting splits, residual adds, squeeze-excitation gates and depthwise convs in
    any order, and a classifier reading the pooled value or a slice of the flattened one."""
    c = draw(st.sampled_from([4, 6]))
    b = GraphBuilder("mix", rng=np.random.default_rng(0))
    values = [b.add("relu", [b.conv2d(b.input("x", (3, 6, 6)), c, 1)])]
    for _ in range(draw(st.integers(1, 4))):
        h = values[-1]
        kind = draw(st.sampled_from(["shuffle", "gather", "split", "add", "conv", "se", "dw"]))
        if kind == "shuffle":
            h = b.add("channel_shuffle", [h], {"groups": draw(st.sampled_from([g for g in (2, 3) if c % g == 0]))})
        elif kind == "gather":
            h = b.add("channel_gather", [h], {"index": tuple(draw(st.permutations(list(range(c)))))})
        elif kind == "split":
            a = draw(st.integers(1, c - 1))
            first, rest = b.add("slice", [h], {"start": 0, "end": a}), b.add("slice", [h], {"start": a, "end": c})
            h = b.concat([rest, b.add("relu", [b.conv2d(first, a, 1)])])
        elif kind == "add":
            h = b.add_([h, draw(st.sampled_from(values))])
        elif kind == "conv":
            h = b.add("relu", [b.conv2d(h, c, 1)])
        elif kind == "se":
            h = b.add("mul", [h, b.add("sigmoid", [b.conv2d(b.conv2d(b.global_avgpool(h), 2, 1), c, 1)])])
        else:
            h = b.conv2d(h, c, 3, padding=1, groups=c)
        values.append(h)
    if draw(st.booleans()):
        head = b.flatten(b.global_avgpool(values[-1]))
    else:  # whole H*W blocks of the flattened value: the split moves by blocks
        head = b.add("slice", [b.flatten(values[-1])], {"start": 0, "end": 36 * draw(st.integers(1, c - 1))})
    b.output("y", b.linear(head, 3))
    return randomise_weights(b.build(), np.random.default_rng(1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rearranging_nets(), st.data())
def test_widening_through_any_mix_of_rearrangements_is_exact_or_refused_with_a_reason(graph, data):
    for node in graph.layers():
        reason = widen_reason(graph, node.name)
        if reason is not None:  # one line naming the layer (the add of two layouts of the same channels, ...)
            assert reason.startswith(f"widen {node.name}: ") and "\n" not in reason
            continue
        result = checked(graph, widen(graph, node.name, node.width + data.draw(st.integers(1, 4)),
                                      rng=np.random.default_rng(data.draw(st.integers(0, 99)))))
        for other in result.graph.layers():  # and once more, through what the first widening made
            if widen_reason(result.graph, other.name) is None:
                checked(result.graph, widen(result.graph, other.name, other.width + 2))


def _shufflenet():
    torch.manual_seed(0)
    model = ShuffleNetV2(num_classes=10, width_mult=0.25).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return from_module(model, x, name="shufflenet"), x.numpy()


def test_shufflenet_v2_widens_every_branch_output_exactly_and_the_gathers_round_trip(tmp_path):
    graph, x = _shufflenet()
    feeds = {graph.inputs[0].name: x}
    want = run(graph, feeds)[next(iter(graph.outputs))]
    refused = {n.name: widen_reason(graph, n.name) for n in graph.layers()}
    refused = {k: r for k, r in refused.items() if r is not None and "depthwise" not in r}
    assert list(refused) == ["fc"], refused  # the classifier only: its width is the graph output's
    # the last conv of a unit's branch: its channels are shuffled, split, shuffled again ...
    layer = "stage2.1.branch2.2.0"
    flow = trace_channels(graph, layer)
    assert any(isinstance(f, Scatter) for facts in flow.segments.values() for f in facts)
    result = checked(graph, widen(graph, layer, 24, rng=np.random.default_rng(3)))
    wide = result.graph
    assert sum(n.op == "channel_gather" for n in wide.nodes) >= 1
    assert any("-> channel_gather of" in line for line in result.changes)
    _onnx_matches(wide, want, feeds, "shufflenet widened")
    # the widened network round-trips: text, ONNX (Gather on axis 1), PyTorch source and from_module
    assert print_graph(parse_graph(print_graph(wide))) == print_graph(wide)
    back = import_model(export_model(wide))
    assert [n.op for n in back.nodes] == [n.op for n in wide.nodes]
    exported = export_torch_source(wide, tmp_path)
    assert "torch.index_select(x, 1, torch.tensor([" in exported.model_py.read_text()
    spec = importlib.util.spec_from_file_location("shuffle_export", exported.model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.no_grad():
        _close(want, mod.load().eval()(torch.from_numpy(x)).numpy(), "exported source")
    again = from_module(to_module(wide).eval(), torch.from_numpy(x))
    assert sum(n.op == "channel_gather" for n in again.nodes) == sum(n.op == "channel_gather" for n in wide.nodes)
    _close(want, next(iter(run(again, {again.inputs[0].name: x}).values())), "from_module of the widened network")


def _gather_graph():
    b = GraphBuilder("gather", rng=np.random.default_rng(0))
    x = b.input("x", (4, 5, 5))
    h = b.add("channel_gather", [b.conv2d(x, 6, 1)], {"index": (5, 0, 0, 3, 2, 1, 4, 5)})
    b.output("y", b.linear(b.flatten(b.global_avgpool(h)), 3))
    return randomise_weights(b.build(), np.random.default_rng(1))


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_channel_gather_means_the_same_everywhere_and_both_torch_exporters_forms_import(dynamo, tmp_path):
    graph = _gather_graph()
    feeds = probe_inputs(graph, batch=2)
    want = run(graph, feeds)["y"]
    conv = run(Graph(graph.nodes[:2], {"c": graph.nodes[1].name}), feeds)["c"]
    np.testing.assert_array_equal(run(Graph(graph.nodes[:3], {"g": graph.nodes[2].name}), feeds)["g"],
                                  conv[:, [5, 0, 0, 3, 2, 1, 4, 5]])
    assert "channel_gather(conv_1) {index=(5,0,0,3,2,1,4,5)}" in print_graph(graph)
    for opset in (13, 17):
        model = export_model(graph, opset)
        assert [n.op_type for n in model.graph.node if n.op_type == "Gather"] == ["Gather"]
        _close(want, run_onnx(model, feeds)["y"], f"onnxruntime, opset {opset}")
        assert print_graph(import_model(model)).splitlines()[1:] == print_graph(graph).splitlines()[1:]
    module = to_module(graph).eval()
    with torch.no_grad():
        _close(want, module(torch.from_numpy(feeds["x"])).numpy(), "to_module")
    source = export_torch_source(graph, tmp_path).model_py.read_text()
    assert "torch.index_select(x, 1, torch.tensor([5, 0, 0, 3, 2, 1, 4, 5], device=x.device))" in source
    # both torch exporters write the index_select of to_module (and of the exported source) as Gather on axis 1
    x = torch.from_numpy(feeds["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17)
            proto = onnx.load_from_string(f.getvalue())
    imported = import_model(proto)
    assert "channel_gather" in [n.op for n in imported.nodes]
    _close(want, next(iter(run(imported, {imported.inputs[0].name: feeds["x"]}).values())), "torch exporter form")
    again = from_module(module, x)
    assert print_graph(again).count("channel_gather(") == 1
    _close(want, next(iter(run(again, {again.inputs[0].name: feeds["x"]}).values())), "from_module of to_module")


class _Indexed(nn.Module):
    def __init__(self, index, select=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.index, self.select = index, select

    def forward(self, x):
        h = self.conv(x)
        if self.select:  # torch.tensor in forward: a traced tensor constant
            return torch.index_select(h, 1, torch.tensor(self.index))
        return h[:, self.index]


@pytest.mark.parametrize("select", [False, True])
def test_from_module_reads_a_constant_index_of_channels_and_refuses_other_indexing(select):
    x = torch.randn(2, 3, 4, 4)
    model = _Indexed([3, 3, 0] if select else [3, -1, 0], select).eval()  # index_select takes no negatives
    graph = from_module(model, x)
    gather = next(n for n in graph.nodes if n.op == "channel_gather")
    assert gather.attrs["index"] == (3, 3, 0)
    with torch.no_grad():
        _close(model(x).numpy(), run(graph, {graph.inputs[0].name: x.numpy()})[next(iter(graph.outputs))],
               "from_module")
    if select:
        return
    with pytest.raises(TorchImportError, match=r"'getitem': index 7 is out of bounds"):
        from_module(_Indexed([0, 7]).eval(), x)
    with pytest.raises(TorchImportError, match=r"indexing with .* \(the IR slices channels: x\[:, a:b\]\)"):
        from_module(_Indexed(([0, 1], [1, 2])).eval(), x)


def _gather_model(axis: int, index: np.ndarray) -> onnx.ModelProto:
    h = onnx.helper
    node = h.make_node("Gather", ["x", "i"], ["y"], axis=axis, name="pick")
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])],
                         [onnx.numpy_helper.from_array(index.astype(np.int64), "i")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("axis, index, message", [
    (2, np.array([0, 1]), "node 'pick' (Gather): only a gather along the channel axis is supported (axis=2 of "),
    (1, np.array(1), "node 'pick' (Gather): only a non-empty 1-D integer index of channels is supported (got shape []"),
    (1, np.array([0, 4]), "node 'pick' (Gather): index 0..4 is out of range for the 4 channels"),
])
def test_the_importer_refuses_a_gather_it_cannot_read_in_one_line(axis, index, message):
    with pytest.raises(OnnxImportError) as err:
        import_model(_gather_model(axis, index))
    assert message in str(err.value) and "\n" not in str(err.value)
