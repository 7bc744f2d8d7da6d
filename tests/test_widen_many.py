"""`widen_many` (every layer widened in one rewrite) and the local check's fold rule for the copies it makes.

- the result is what widening the layers one `widen` at a time makes (the same widths, the same parameter
  count, the parameter count its size estimate gives), and computes the same function: on random graphs
  (`strategies.cnn_graphs`), a residual net (coupled layers widened once, by the first of them) and a DenseNet
  (every earlier layer's growth read by every later layer of the block);
- it refuses what it cannot combine, with a reason (a channel shuffle on the way, a grouped conv), and
  `easc transform --widen` widens those one pass each, after the others;
- the fold rule (`local_channels.linear_delta`): new - old of a layer reading a gathered value is the whole
  evaluation's new - old, a broken split of the copies' columns is caught, and a wrong claim only costs the
  fast path;
- `_evaluate_distinct_rows` computes what `_evaluate` does.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easc.ir import run_all
from easc.passes import local_channels
from easc.passes.base import PRESERVATION_RTOL, FunctionNotPreservedError, Pass, PassError, max_output_difference
from easc.passes.local_check import _evaluate, _evaluate_distinct_rows
from easc.passes.manager import PassManager
from easc.passes.pipeline import registry, widen_all
from easc.passes.widen import many_reason, widen, widen_many, widenable_layers
from easc.search.densenet_start import densenet_digits
from strategies import cnn_graphs, randomise_weights
from test_pass_manager import net
from test_widen import DEPTHWISE_SE, _graph


def _assert_activations_are_the_new_graphs(manager):
    cached = manager.probes.activations(manager.graph)
    for name, value in run_all(manager.graph, dict(manager.probes)).items():
        np.testing.assert_allclose(cached[name], value, rtol=1e-5, atol=1e-5 * (1 + np.abs(value).max()),
                                   err_msg=name)


def _dense(seed=0):
    return randomise_weights(densenet_digits(seed=seed), np.random.default_rng(seed + 1))


def _together(graph):
    return [layer for layer in widenable_layers(graph) if many_reason(graph, layer) is None]


@pytest.mark.parametrize("fold_positions", [0, local_channels.FOLD_POSITIONS])
@pytest.mark.parametrize("make", [net, _dense], ids=["residual", "densenet"])
def test_widen_many_makes_the_widths_one_widen_at_a_time_makes_and_keeps_the_function(
        monkeypatch, make, fold_positions):
    monkeypatch.setattr(local_channels, "FOLD_POSITIONS", fold_positions)  # 0: every reader folded
    graph = make()
    layers = _together(graph)
    manager = PassManager(graph, seed=0)
    estimate = registry()["widen_many"].added_params(graph, layers=layers, factor=2.0)
    result = manager.run("widen_many", layers=layers, factor=2.0)
    one_at_a_time = graph
    for layer in layers:
        target = 2 * graph.node(layer).width
        if one_at_a_time.node(layer).width < target:
            one_at_a_time = widen(one_at_a_time, layer, target, rng=np.random.default_rng(0)).graph
    assert {n.name: n.type for n in result.graph.nodes} == {n.name: n.type for n in one_at_a_time.nodes}
    assert result.graph.params == one_at_a_time.params == graph.params + estimate
    diff, scale = max_output_difference(graph, result.graph, dict(manager.probes))
    assert diff <= PRESERVATION_RTOL * (1 + scale)
    assert result.max_diff <= PRESERVATION_RTOL * (1 + scale)
    _assert_activations_are_the_new_graphs(manager)
    manager.run("widen", layer=layers[0], width=result.graph.node(layers[0]).width + 3)  # a later check
    _assert_activations_are_the_new_graphs(manager)
    manager.finish()


def test_a_residual_pair_is_widened_once_with_one_mapping():
    graph = net()
    result = widen_many(graph, ["conv_1", "conv_2", "conv_3"], 2.0, rng=np.random.default_rng(0))
    assert result.record == {"pass": "widen_many", "layers": ["conv_1", "conv_3"], "factor": 2.0}  # conv_2: coupled
    assert result.graph.node("conv_2").width == 16
    np.testing.assert_array_equal(result.channels["conv_1"], result.channels["conv_2"])


def test_widen_many_refuses_what_it_cannot_combine_with_a_reason():
    graph = _graph(DEPTHWISE_SE)
    assert many_reason(graph, "conv_2") == ("widen_many conv_2: its channels pass through shuffle_1 "
                                            "(channel_shuffle); widen it on its own")
    assert "part_1 (slice)" in many_reason(graph, "conv_1")
    assert many_reason(graph, "sq_1") is None
    with pytest.raises(PassError, match="widen_many conv_2: its channels pass through shuffle_1"):
        widen_many(graph, ["sq_1", "conv_2"], 2.0)
    with pytest.raises(PassError, match="factor must be a finite number > 1"):
        widen_many(graph, ["sq_1"], 1.0)
    with pytest.raises(PassError, match="graph output"):
        widen_many(net(), ["fc_1"], 2.0)
    with pytest.raises(PassError, match="layers must be a list of layer names, got 'conv_1'"):
        widen_many(net(), "conv_1", 2.0)
    with pytest.raises(PassError, match="no layer given"):
        widen_many(net(), [], 2.0)


@pytest.mark.parametrize("arch, together", [("densenet121", True), ("googlenet", True), ("shufflenet_v2", False),
                                            ("resnext50", False), ("mobilenet_v2", False)])
def test_widen_all_widens_layers_read_together_in_one_pass_and_the_others_one_at_a_time(arch, together):
    """The standard layouts at reduced width: `widen_all` (the CLI's bare `--widen`) is one `widen_many` per group
    of layers whose channels meet in common readers (`shared_readers`: a dense block, an inception module, and
    the layers feeding them), then one `widen` for each other layer (a plain chain, a residual stage, channels
    through a shuffle or a grouped conv); every layer ends doubled (or grown to its groups' multiple) and the
    function is the same."""
    import torch

    from easc.backends.torch import from_module
    from easc.backends.torch.zoo import ARCHITECTURES
    from easc.passes.widen import nearest_valid_width, shared_readers

    torch.manual_seed(0)
    model = ARCHITECTURES[arch](num_classes=10, width_mult=0.25).eval()
    graph = from_module(model, torch.randn(2, 3, 32, 32), name=arch)
    groups = [g for g in shared_readers(graph, _together(graph)) if len(g) > 1]
    assert bool(groups) == together
    manager = PassManager(graph, seed=0)
    results = widen_all(graph, 2.0, manager=manager)
    assert [r.record["layers"] for r in results if r.record["pass"] == "widen_many"] == groups
    grouped = {layer for g in groups for layer in g}
    assert all(r.record["layer"] not in grouped for r in results if r.record["pass"] == "widen")
    for layer in widenable_layers(graph):
        target = nearest_valid_width(graph, layer, 2 * graph.node(layer).width)
        assert manager.graph.node(layer).width >= target
    diff, scale = max_output_difference(graph, manager.graph, dict(manager.probes))
    assert diff <= PRESERVATION_RTOL * (1 + scale)
    manager.finish()


def test_transform_widen_of_a_densenet_is_one_widen_many_and_keeps_the_function(tmp_path):
    from click.testing import CliRunner

    from easc.backends.onnx import run_onnx, save_onnx
    from easc.cli.main import main

    graph = _dense()
    save_onnx(graph, tmp_path / "dense.onnx")
    result = CliRunner().invoke(main, ["transform", str(tmp_path / "dense.onnx"), "--widen", "-o",
                                       str(tmp_path / "wide.onnx")])
    assert result.exit_code == 0, result.output
    assert result.output.count("verified exact") == 1
    assert "widen_many layers=" in result.output and " layers (" in result.output  # the list shown by count
    x = np.random.default_rng(0).standard_normal((3,) + tuple(graph.inputs[0].type.shape[1:])).astype(np.float32)
    feeds = {graph.inputs[0].name: x}
    before = next(iter(run_onnx(tmp_path / "dense.onnx", feeds).values()))
    after = next(iter(run_onnx(tmp_path / "wide.onnx", feeds).values()))
    assert np.max(np.abs(after - before)) <= 1e-5 * (1 + np.max(np.abs(before)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs(), data=st.data())
def test_widen_many_on_random_graphs_keeps_the_function_and_the_local_check_agrees(graph, data):
    layers = _together(graph)
    if not layers:
        return
    chosen = data.draw(st.lists(st.sampled_from(layers), min_size=1, unique=True), label="layers")
    factor = data.draw(st.sampled_from([1.5, 2.0, 3.0]), label="factor")
    fold = data.draw(st.booleans(), label="fold every reader")
    local_channels.FOLD_POSITIONS, saved = (0 if fold else local_channels.FOLD_POSITIONS), local_channels.FOLD_POSITIONS
    try:
        manager = PassManager(graph, seed=data.draw(st.integers(0, 100), label="seed"))
        result = manager.run("widen_many", layers=chosen, factor=factor)
    finally:
        local_channels.FOLD_POSITIONS = saved
    diff, scale = max_output_difference(graph, result.graph, dict(manager.probes))
    assert diff <= PRESERVATION_RTOL * (1 + scale)
    _assert_activations_are_the_new_graphs(manager)


class BrokenSplit(Pass):
    """widen_many, then one consumer's input column `column` changed by `delta` (the split of a copied channel's
    column no longer sums to the old column)."""

    name = "broken_split"
    arguments = ("layers", "victim", "column", "delta")

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, layers, victim, column, delta):
        result = widen_many(graph, layers, 2.0, rng=rng)
        node = result.graph.node(victim)
        weight = np.array(node.weights["weight"])
        weight[:, column] += delta
        changed = node.replace(weights={**node.weights, "weight": weight})
        result.graph = result.graph.replace(nodes=[changed if n.name == victim else n for n in result.graph.nodes])
        return result


@pytest.mark.parametrize("fold_positions", [0, local_channels.FOLD_POSITIONS])
@pytest.mark.parametrize("victim", ["transition1_conv", "block2_layer2_bottleneck", "classifier"])
def test_a_broken_split_of_the_copies_columns_is_caught(monkeypatch, fold_positions, victim):
    monkeypatch.setattr(local_channels, "FOLD_POSITIONS", fold_positions)
    graph = _dense()
    layers = _together(graph)
    reads = graph.node(victim).inputs[0]
    # a copy's column whose channel is alive on the probes (a dead channel's weights change nothing)
    manager = PassManager(graph, passes={**registry(), "broken_split": BrokenSplit()})
    values = run_all(graph, dict(manager.probes))[reads]
    held = widen_many(graph, layers, 2.0, rng=np.random.default_rng(0)).channels[reads]
    column = next(j for j in range(graph.node(reads).type.shape[1], len(held))
                  if np.max(np.abs(values[:, held[j]])) > 0.1)
    broken = BrokenSplit().apply(graph, rng=np.random.default_rng(0), layers=layers, victim=victim, column=column,
                                 delta=0.5).graph
    diff, scale = max_output_difference(graph, broken, dict(manager.probes))
    assert diff > 100 * PRESERVATION_RTOL * (1 + scale)  # a real change of the function (the oracle sees it)
    with pytest.raises(FunctionNotPreservedError, match="broken_split did not preserve the function"):
        manager.run("broken_split", layers=layers, victim=victim, column=column, delta=0.5)


def _reader_case(seed: int, repeats: bool):
    """A conv reading a value whose new channels are old channels (some repeated), its columns split as
    Net2Wider splits them (by copy counts), the old conv, the old input, the patch."""
    rng = np.random.default_rng(seed)
    c_old, out = 5, 3
    src = np.r_[np.arange(c_old), rng.integers(0, c_old, size=4 if repeats else 0)]
    rng.shuffle(src)
    counts = np.bincount(src, minlength=c_old)
    w_old = rng.standard_normal((out, c_old, 3, 3)).astype(np.float32)
    w_new = (w_old[:, src] / counts[src].reshape(1, -1, 1, 1).astype(np.float32)).astype(np.float32)
    x_old = rng.standard_normal((2, c_old, 6, 6))
    return src, w_old, w_new, x_old


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("broken", [False, True])
def test_the_fold_rule_computes_the_whole_evaluations_difference(monkeypatch, seed, broken):
    from easc.ir.kernels import conv2d_array

    monkeypatch.setattr(local_channels, "FOLD_POSITIONS", 0)  # folded however few the positions
    src, w_old, w_new, x_old = _reader_case(seed, repeats=True)
    if broken:
        w_new[1, seed % len(src), 1, 1] += 0.25
    old = type("N", (), {})()
    node = type("N", (), {})()
    shared = type("T", (), {"shape": (None, 3, 6, 6)})()  # the reader's type is unchanged
    for n, w in ((old, w_old), (node, w_new)):
        n.op, n.inputs, n.weights, n.type = "conv2d", ("x",), {"weight": w}, shared
        n.attrs = {"out": 3, "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1,
                   "bias": False}
    patch = local_channels.Patch.gather((2, len(src), 6, 6), src)
    asked = []
    delta = local_channels.linear_delta(node, old, patch, lambda index: asked.append(index) or x_old[:, index])
    whole = conv2d_array(x_old[:, src], w_new.astype(np.float64), None, (1, 1), (1, 1), (1, 1), 1) \
        - conv2d_array(x_old, w_old.astype(np.float64), None, (1, 1), (1, 1), (1, 1), 1)
    if delta.size == 0:  # every column cancelled: the whole evaluation finds nothing either
        assert not broken and np.max(np.abs(whole)) < 1e-12
    else:
        np.testing.assert_allclose(delta, whole, atol=1e-10)
    if broken:
        assert np.max(np.abs(delta)) > 0.01
    if asked:  # only the columns whose fold misses the old column were multiplied
        assert len(asked[0]) < w_old.shape[1] or broken


def test_a_split_by_powers_of_two_cancels_exactly_without_a_product(monkeypatch):
    monkeypatch.setattr(local_channels, "FOLD_POSITIONS", 0)
    src = np.array([0, 1, 2, 0, 1, 0, 0])  # channel 0 held four times, 1 twice, 2 once
    w_old = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    counts = np.bincount(src)
    w_new = (w_old[:, src] / counts[src].astype(np.float32)).astype(np.float32)
    node, old = type("N", (), {})(), type("N", (), {})()
    shared = type("T", (), {"shape": (None, 4)})()
    for n, w in ((old, w_old), (node, w_new)):
        n.op, n.inputs, n.weights, n.attrs, n.type = "linear", ("x",), {"weight": w}, {"out": 4}, shared
    asked = []
    delta = local_channels.linear_delta(node, old, local_channels.Patch.gather((2, 7), src),
                                        lambda index: asked.append(index))
    assert delta.size == 0 and asked == []


@pytest.mark.parametrize("copies", [True, False])
def test_distinct_rows_are_evaluated_once_and_give_the_whole_evaluation(copies):
    graph = net()
    result = widen(graph, "conv_3", 16, rng=np.random.default_rng(0))
    node = result.graph.node("conv_3")
    if not copies:  # a row that is not the copy its claim says: evaluated whole
        weight = np.array(node.weights["weight"])
        weight[12] += 1.0
        node = node.replace(weights={**node.weights, "weight": weight})
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 8))
    claim = result.channels["conv_3"]
    np.testing.assert_allclose(_evaluate_distinct_rows(node, [x], claim), _evaluate(node, [x]), rtol=1e-12, atol=1e-12)


class BrokenFilter(Pass):
    """widen, then one number of the depthwise conv's filter `channel` changed."""

    name = "broken_filter"
    arguments = ("layer", "width", "channel")

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, layer, width, channel):
        result = widen(graph, layer, width, rng=rng)
        node = result.graph.node("dw_1")
        weight = np.array(node.weights["weight"])
        weight[channel, 0, 1, 1] += 0.5
        changed = node.replace(weights={**node.weights, "weight": weight})
        result.graph = result.graph.replace(nodes=[changed if n.name == "dw_1" else n for n in result.graph.nodes])
        return result


def test_a_depthwise_conv_on_a_widens_copies_is_followed_channel_by_channel_and_a_changed_filter_is_caught(
        monkeypatch):
    """conv_1 -> bn -> clip -> depthwise conv -> hardswish -> (squeeze-excitation gate) mul: widened, the depthwise
    conv's copies hold their originals' filters, so its output is the old one gathered (`per_channel`), not
    evaluated; with one filter changed (an original's or a copy's) the check evaluates and catches it."""
    graph = randomise_weights(_graph(DEPTHWISE_SE), np.random.default_rng(3))
    followed = []
    real = local_channels.per_channel

    def spy(node, old, patch):
        out = real(node, old, patch)
        if out is not None:
            followed.append(node.name)
        return out

    monkeypatch.setattr(local_channels, "per_channel", spy)
    manager = PassManager(graph, seed=0)
    manager.run("widen", layer="conv_1", width=7)
    assert {"bn_1", "clip_1", "dw_1", "hs_1"} <= set(followed)
    _assert_activations_are_the_new_graphs(manager)
    for channel in (1, 5):  # an original's filter, a copy's
        broken = PassManager(graph, seed=0, passes={**registry(), "broken_filter": BrokenFilter()})
        with pytest.raises(FunctionNotPreservedError, match="broken_filter did not preserve the function"):
            broken.run("broken_filter", layer="conv_1", width=7, channel=channel)
