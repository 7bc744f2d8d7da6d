"""Net2Deeper (`passes/deepen.py`): identity conv / linear -> batchnorm (-> relu) blocks, checked numerically."""

import numpy as np
import pytest

from easc.ir import UnknownNodeError, parse_graph, print_graph, probe_inputs, run_all
from easc.passes.base import PRESERVATION_RTOL, Pass, PassError, checked
from easc.passes.deepen import DEFAULT_EPS, calibration_stats, deepen, deepenable
from strategies import randomise_weights

NET = """
graph net
  x = input() : f32[N,2,8,8]
  conv_1 = conv2d(x) {out=4, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,4,8,8]
  bn_1 = batchnorm(conv_1) {eps=1e-05, momentum=0.1} : f32[N,4,8,8]
  relu_1 = relu(bn_1) : f32[N,4,8,8]
  conv_2 = conv2d(relu_1) {out=4, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,4,8,8]
  add_1 = add(conv_2, relu_1) : f32[N,4,8,8]
  conv_3 = conv2d(add_1) {out=6, kernel=(1,1), stride=(1,1), padding=(0,0), dilation=(1,1), groups=1, bias=true} : f32[N,6,8,8]
  maxpool_1 = maxpool2d(conv_3) {kernel=(2,2), stride=(2,2), padding=(0,0), ceil=false} : f32[N,6,4,4]
  flatten_1 = flatten(maxpool_1) : f32[N,96]
  fc_1 = linear(flatten_1) {out=5, bias=true} : f32[N,5]
  relu_2 = relu(fc_1) : f32[N,5]
  fc_2 = linear(relu_2) {out=3, bias=true} : f32[N,3]
  output logits = fc_2
"""


def net():
    return randomise_weights(parse_graph(NET), np.random.default_rng(1))


def _snapshot(graph):
    return print_graph(graph), {(n.name, k): w.copy() for n in graph.nodes for k, w in n.weights.items()}


def _run_pass_and_check(graph, after, **kwargs):
    """Deepen, verify + signature + numeric check, and make sure the input graph was not touched."""
    text, weights = _snapshot(graph)
    result = checked(graph, deepen(graph, after, **kwargs))
    assert result.max_diff <= PRESERVATION_RTOL * (1 + result.max_output)
    assert print_graph(graph) == text
    for (name, key), w in weights.items():
        np.testing.assert_array_equal(graph.node(name).weights[key], w)
    assert result.record["pass"] == "deepen" and result.record["after"] == after
    return result


def test_deepen_after_a_relu_inserts_conv_bn_relu_and_rewires_every_consumer():
    g = net()
    result = _run_pass_and_check(g, "relu_1")
    new = result.graph
    names = [n.name for n in new.nodes]
    i = names.index("relu_1")
    assert names[i + 1:i + 4] == ["deepen_relu_1", "deepen_relu_1_bn", "deepen_relu_1_relu"]
    assert new.node("conv_2").inputs == ("deepen_relu_1_relu",)
    assert new.node("add_1").inputs == ("conv_2", "deepen_relu_1_relu")
    conv = new.node("deepen_relu_1")
    assert conv.attrs["kernel"] == (3, 3) and conv.attrs["padding"] == (1, 1) and conv.origin == "relu_1"
    expected = np.zeros((4, 4, 3, 3), np.float32)
    for c in range(4):
        expected[c, c, 1, 1] = 1.0
    np.testing.assert_array_equal(conv.weights["weight"], expected)
    np.testing.assert_array_equal(conv.weights["bias"], np.zeros(4))
    bn = new.node("deepen_relu_1_bn").weights
    np.testing.assert_array_equal(bn["mean"], np.zeros(4))
    np.testing.assert_allclose(bn["var"], np.full(4, 1 - DEFAULT_EPS))
    np.testing.assert_array_equal(bn["scale"], np.ones(4))
    np.testing.assert_array_equal(bn["bias"], np.zeros(4))
    assert new.depth == g.depth + 1
    assert any("relu_1's value is non-negative" in line for line in result.changes)
    assert "conv_2, add_1 now read deepen_relu_1_relu instead of relu_1" in result.changes
    assert result.record == {"pass": "deepen", "after": "relu_1", "calibrated": False, "kernel": 3}


def test_deepen_after_a_conv_whose_value_can_be_negative_adds_no_relu_and_says_so():
    result = _run_pass_and_check(net(), "conv_3")
    new = result.graph
    assert [n.op for n in new.nodes if n.origin == "conv_3"] == ["conv2d", "batchnorm"]
    assert new.node("maxpool_1").inputs == ("deepen_conv_3_bn",)
    assert ("no relu: conv_3's value can be negative and relu(x) = x only for x >= 0, so the block has no "
            "activation") in result.changes


def test_deepen_in_the_classifier_inserts_an_identity_linear():
    result = _run_pass_and_check(net(), "relu_2")
    layer = result.graph.node("deepen_relu_2")
    assert layer.op == "linear" and layer.attrs["out"] == 5
    np.testing.assert_array_equal(layer.weights["weight"], np.eye(5))
    assert result.graph.node("fc_2").inputs == ("deepen_relu_2_relu",)
    assert "kernel" not in result.record
    # the kernel does not apply to a linear layer, whatever it is
    _run_pass_and_check(net(), "relu_2", kernel=None)
    # fc_1's value is a plain affine map: no relu after it
    result = _run_pass_and_check(net(), "fc_1")
    assert "deepen_fc_1_relu" not in result.graph


def test_deepen_after_flatten_and_after_the_input_are_exact():
    _run_pass_and_check(net(), "flatten_1")
    result = _run_pass_and_check(net(), "x", kernel=5)
    assert result.graph.node("conv_1").inputs == ("deepen_x_bn",)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_deepen_kernel_sizes_put_the_one_at_the_centre_tap(kernel):
    result = _run_pass_and_check(net(), "relu_1", kernel=kernel)
    conv = result.graph.node("deepen_relu_1")
    assert conv.attrs["kernel"] == (kernel, kernel) and conv.attrs["padding"] == (kernel // 2, kernel // 2)
    w = conv.weights["weight"]
    assert w.sum() == 4 and all(w[c, c, kernel // 2, kernel // 2] == 1 for c in range(4))


@pytest.mark.parametrize("kernel", [2, 4, 0, -1, 2.5, True])
def test_deepen_refuses_a_kernel_without_a_centre_tap(kernel):
    with pytest.raises(PassError, match=rf"deepen relu_1: kernel {kernel!r} is not an odd positive size; an "
                                        r"identity kernel needs a centre tap \(use 1, 3, 5, ...\)"):
        deepen(net(), "relu_1", kernel=kernel)


def test_calibration_stats_are_the_per_channel_population_statistics():
    g = net()
    x = np.random.default_rng(2).standard_normal((16, 2, 8, 8)).astype(np.float32)
    mean, var = calibration_stats(g, "relu_1", x)
    value = run_all(g, {"x": x})["relu_1"]
    # computed in float32 (6e-8 relative rounding per operation), summed in float64
    np.testing.assert_allclose(mean, [value[:, c].mean() for c in range(4)], rtol=1e-6)
    np.testing.assert_allclose(var, [value[:, c].var(ddof=0) for c in range(4)], rtol=1e-6)
    assert mean.dtype == var.dtype == np.float64
    m2, v2 = calibration_stats(g, "fc_1", {"x": x})
    assert m2.shape == v2.shape == (5,)


def test_the_interpreter_computes_in_float32_when_asked_with_float32_rounding_only():
    g = net()
    x = np.random.default_rng(4).standard_normal((8, 2, 8, 8))
    exact, single = run_all(g, {"x": x}), run_all(g, {"x": x}, dtype=np.float32)
    for name, value in exact.items():
        assert single[name].dtype == np.float32, name
        np.testing.assert_allclose(single[name], value, rtol=1e-5, atol=1e-5 * (1 + np.abs(value).max()))
    assert all(v.dtype == np.float64 for v in exact.values())


def test_deepen_with_calibration_sets_the_batchnorm_as_eas_and_is_exact_in_eval_mode():
    g = net()
    x = np.random.default_rng(3).standard_normal((32, 2, 8, 8)).astype(np.float32)
    mean, var = calibration_stats(g, "relu_1", x)
    result = _run_pass_and_check(g, "relu_1", calibration=(mean, var))
    assert result.record["calibrated"] is True
    bn = result.graph.node("deepen_relu_1_bn")
    np.testing.assert_allclose(bn.weights["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.weights["var"], var, rtol=1e-6)
    np.testing.assert_allclose(bn.weights["bias"], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.weights["scale"], np.sqrt(var + bn.attrs["eps"]), rtol=1e-6)
    # also exact on the calibration batch itself, which is far from the probes' distribution
    checked(g, result, probes={"x": x})
    # train mode: batchnorm normalises with the batch's own statistics; on the calibration batch those are
    # (mean, var), so gamma (y - mean) / sqrt(var + eps) + beta gives back y
    y = run_all(result.graph, {"x": x})["deepen_relu_1"]
    bm, bv = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    shape = (1, -1, 1, 1)
    w = {k: v.astype(np.float64).reshape(shape) for k, v in bn.weights.items()}
    train = w["scale"] * (y - bm.reshape(shape)) / np.sqrt(bv.reshape(shape) + bn.attrs["eps"]) + w["bias"]
    np.testing.assert_allclose(train, y, atol=1e-5)


def test_deepening_twice_at_the_same_place_gives_fresh_names():
    first = _run_pass_and_check(net(), "relu_1").graph
    second = _run_pass_and_check(first, "relu_1").graph
    assert {"deepen_relu_1_2", "deepen_relu_1_bn_2", "deepen_relu_1_relu_2"} <= {n.name for n in second.nodes}
    assert second.node("deepen_relu_1").inputs == ("deepen_relu_1_relu_2",)


def test_deepenable_lists_read_values_that_are_not_outputs():
    g = net()
    assert deepenable(g) == ["x", "conv_1", "bn_1", "relu_1", "conv_2", "add_1", "conv_3", "maxpool_1",
                             "flatten_1", "fc_1", "relu_2"]
    for after in deepenable(g):
        _run_pass_and_check(g, after)


# -- every refusal -------------------------------------------------------------------------------

def test_deepen_an_unknown_node_lists_the_valid_names():
    with pytest.raises(UnknownNodeError, match=r"no node named 'conv_9' in the graph \(valid: x, conv_1, bn_1"):
        deepen(net(), "conv_9")


def test_deepen_refuses_a_graph_output():
    with pytest.raises(PassError, match=r"deepen fc_2: its value is the graph output 'logits'; a block after it "
                                        r"would change the output \(deepen an earlier node\)"):
        deepen(net(), "fc_2")


def test_deepen_refuses_a_value_nobody_reads():
    g = parse_graph(NET.replace("  output logits = fc_2",
                                "  dead_1 = relu(conv_1) : f32[N,4,8,8]\n  output logits = fc_2"))
    with pytest.raises(PassError, match="deepen dead_1: no node reads its value, so a block after it would "
                                        "compute nothing"):
        deepen(g, "dead_1")
    assert "dead_1" not in deepenable(g)


def test_deepen_refuses_a_value_that_is_neither_nchw_nor_nc():
    g = parse_graph("""
      seq = input() : f32[N,3,5]
      flatten_1 = flatten(seq) : f32[N,15]
      fc_1 = linear(flatten_1) {out=2, bias=true} : f32[N,2]
    """)
    with pytest.raises(PassError, match=r"deepen seq: its value f32\[N,3,5\] is neither NCHW nor NC"):
        deepen(g, "seq")
    assert deepenable(g) == ["flatten_1"]


@pytest.mark.parametrize("calibration, message", [
    ((np.zeros(3), np.ones(4)),
     r"calibration mean has shape \(3,\), expected \(4,\) \(one value per channel of relu_1\)"),
    ((np.zeros(4), np.ones((4, 1))), r"calibration var has shape \(4, 1\), expected \(4,\)"),
    ((np.full(4, np.nan), np.ones(4)), "calibration mean has NaN or infinite values"),
    ((np.zeros(4), -np.ones(4)), r"calibration var has negative values \(a variance is >= 0\)"),
    ((np.zeros(4),), r"calibration must be a pair \(mean, var\) of per-channel arrays"),
    (5, r"calibration must be a pair \(mean, var\) of per-channel arrays"),
])
def test_deepen_refuses_bad_calibration(calibration, message):
    with pytest.raises(PassError, match=r"deepen relu_1: " + message):
        deepen(net(), "relu_1", calibration=calibration)


def test_calibration_stats_needs_a_dict_for_several_inputs_and_a_known_node():
    g = parse_graph("""
      a = input() : f32[N,3]
      b = input() : f32[N,2]
      concat_1 = concat(a, b) : f32[N,5]
      fc_1 = linear(concat_1) {out=2, bias=true} : f32[N,2]
    """)
    with pytest.raises(PassError, match=r"calibration_stats: the graph has 2 inputs \(a, b\); pass a dict "
                                        r"\{input name: array\}"):
        calibration_stats(g, "concat_1", np.zeros((2, 5)))
    with pytest.raises(UnknownNodeError, match="no node named 'nope'"):
        calibration_stats(g, "nope", probe_inputs(g))


# -- the local check's identity rule (`local_check.is_identity_layer`) --------------------------------------
def _inserted(graph, after, **kwargs):
    result = deepen(graph, after, **kwargs)
    layer = result.graph.node(f"deepen_{after}")
    return result, layer, result.graph.node(after).type


@pytest.mark.parametrize("after, kernel", [("relu_1", 3), ("relu_1", 5), ("relu_1", 1), ("relu_2", None)])
def test_the_local_check_takes_an_inserted_identity_layer_for_its_input_without_computing_it(after, kernel,
                                                                                            monkeypatch):
    from easc.passes import local_check
    from easc.passes.manager import PassManager

    result, layer, input_type = _inserted(net(), after, kernel=kernel)
    assert local_check.is_identity_layer(layer, input_type)
    computed = []
    real = local_check._evaluate
    monkeypatch.setattr(local_check, "_evaluate", lambda node, args: computed.append(node.name) or real(node, args))
    manager = PassManager(net(), seed=0)
    manager.probes.activations(manager.graph)
    manager.run("deepen", after=after, kernel=kernel)
    assert layer.name not in computed and f"{layer.name}_bn" in computed  # the batchnorm is computed
    diff, scale = manager.finish()
    assert diff <= PRESERVATION_RTOL * (1 + scale)


def _changed(layer, key, where, value):
    weights = dict(layer.weights)
    array = np.array(weights[key])
    array[where] = value
    weights[key] = array
    return layer.replace(weights=weights)


@pytest.mark.parametrize("change", [
    lambda l: _changed(l, "weight", (0, 1, 1, 1), 1e-3),  # another channel's centre tap
    lambda l: _changed(l, "weight", (2, 2, 0, 1), 1e-3),  # its own channel, off centre
    lambda l: _changed(l, "weight", (3, 3, 1, 1), 1.0000001),  # a centre tap not exactly 1
    lambda l: _changed(l, "weight", (1, 1, 1, 1), 0.0),  # a centre tap missing
    lambda l: _changed(l, "bias", (0,), 1e-6),
    lambda l: l.replace(attrs={**l.attrs, "padding": (0, 0)}),
    lambda l: l.replace(attrs={**l.attrs, "dilation": (2, 2), "padding": (2, 2)}),
], ids=["cross_channel", "off_centre", "tap_not_one", "tap_missing", "bias", "padding", "dilation"])
def test_a_layer_that_is_not_exactly_the_identity_is_computed(change):
    from easc.passes import local_check

    _, layer, input_type = _inserted(net(), "relu_1")
    assert not local_check.is_identity_layer(change(layer), input_type)


class _AlteredDeepen(Pass):
    """deepen, then one inserted node changed by `alter` (inside the region the local check sees)."""

    arguments = ("after",)

    def __init__(self, name: str, suffix: str, alter):
        self.name, self.suffix, self.alter = name, suffix, alter

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, after):
        result = deepen(graph, after, rng=rng)
        name = f"deepen_{after}{self.suffix}"
        altered = self.alter(result.graph.node(name))
        result.graph = result.graph.replace(nodes=[altered if n.name == name else n for n in result.graph.nodes])
        return result


def test_a_deepen_whose_inserted_conv_is_not_the_identity_is_caught_by_the_local_check():
    from easc.passes.base import FunctionNotPreservedError
    from easc.passes.manager import PassManager
    from easc.passes.pipeline import registry

    broken = _AlteredDeepen("broken_deepen", "", lambda conv: _changed(conv, "weight", (0, 0, 0, 0), 0.25))
    manager = PassManager(net(), seed=0, passes={**registry(), "broken_deepen": broken})
    with pytest.raises(FunctionNotPreservedError, match="broken_deepen did not preserve the function"):
        manager.run("broken_deepen", after="relu_1")


# -- the local check's rule for the readers of a deepened value (`local_check.renamed_inputs`) --------------
@pytest.mark.parametrize("after, readers", [("relu_1", ["conv_2", "add_1"]), ("relu_2", ["fc_2"])])
def test_the_readers_of_a_deepened_value_are_not_computed_when_the_block_returns_it(after, readers, monkeypatch):
    from easc.passes import local_check
    from easc.passes.manager import PassManager

    computed = []
    real = local_check._evaluate
    monkeypatch.setattr(local_check, "_evaluate", lambda node, args: computed.append(node.name) or real(node, args))
    manager = PassManager(net(), seed=0)
    manager.probes.activations(manager.graph)
    computed.clear()  # the start graph's values were computed; from here on, the check's
    manager.run("deepen", after=after)
    assert f"deepen_{after}_bn" in computed  # the block is computed and found to return its input ...
    assert not set(readers) & set(computed)  # ... so its readers, the same layers as before, are not
    cached = manager.probes.activations(manager.graph)
    fresh = run_all(manager.graph, dict(manager.probes))
    for name in readers:
        np.testing.assert_allclose(cached[name], fresh[name], rtol=1e-5, atol=1e-5 * (1 + np.abs(fresh[name]).max()))
    diff, scale = manager.finish()
    assert diff <= PRESERVATION_RTOL * (1 + scale)


def test_renamed_inputs_are_the_places_a_node_reads_another_value_with_the_very_same_weights():
    from easc.passes.local_check import renamed_inputs

    graph = net()
    result = deepen(graph, "relu_1")
    conv, add = result.graph.node("conv_2"), result.graph.node("add_1")
    assert renamed_inputs(conv, graph.node("conv_2")) == [("deepen_relu_1_relu", "relu_1")]
    assert renamed_inputs(add, graph.node("add_1")) == [("deepen_relu_1_relu", "relu_1")]
    assert renamed_inputs(graph.node("conv_2"), graph.node("conv_2")) == []  # reads nothing else
    equal_copies = conv.replace(weights={k: np.array(w) for k, w in conv.weights.items()})
    assert renamed_inputs(equal_copies, graph.node("conv_2")) == []  # equal weights, but not the very arrays
    assert renamed_inputs(conv.replace(attrs={**conv.attrs, "padding": (0, 0)}), graph.node("conv_2")) == []
    assert renamed_inputs(add.replace(op="mul"), graph.node("add_1")) == []


def test_a_deepen_whose_block_does_not_return_its_input_is_caught_at_its_readers():
    from easc.passes.base import FunctionNotPreservedError
    from easc.passes.manager import PassManager
    from easc.passes.pipeline import registry

    # the inserted batchnorm's bias moved by 0.5: the block no longer returns its input
    shifted = _AlteredDeepen("shifted_deepen", "_bn",
                             lambda bn: _changed(bn, "bias", (0,), bn.weights["bias"][0] + 0.5))
    manager = PassManager(net(), seed=0, passes={**registry(), "shifted_deepen": shifted})
    with pytest.raises(FunctionNotPreservedError, match="shifted_deepen did not preserve the function: the value of "
                                                        "(conv_2|add_1) differs"):
        manager.run("shifted_deepen", after="relu_1")
