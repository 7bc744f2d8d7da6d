"""Dense paths (`passes/skip.py`): concat an earlier value onto a later layer's input with zero weights."""

import numpy as np
import pytest

from easc.ir import UnknownNodeError, parse_graph, print_graph
from easc.passes.base import PRESERVATION_RTOL, PassError, checked
from easc.passes.skip import skip, skip_candidates
from strategies import randomise_weights

CONV = "{{out={out}, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups={groups}, bias=true}}"


def conv(out, groups=1):
    return CONV.format(out=out, groups=groups)


NET = f"""
graph net
  x = input() : f32[N,2,8,8]
  conv_1 = conv2d(x) {conv(4)} : f32[N,4,8,8]
  relu_1 = relu(conv_1) : f32[N,4,8,8]
  conv_2 = conv2d(relu_1) {conv(6)} : f32[N,6,8,8]
  relu_2 = relu(conv_2) : f32[N,6,8,8]
  maxpool_1 = maxpool2d(relu_2) {{kernel=(2,2), stride=(2,2), padding=(0,0), ceil=false}} : f32[N,6,4,4]
  conv_3 = conv2d(maxpool_1) {conv(8)} : f32[N,8,4,4]
  relu_3 = relu(conv_3) : f32[N,8,4,4]
  gap_1 = global_avgpool(relu_3) : f32[N,8,1,1]
  flatten_1 = flatten(gap_1) : f32[N,8]
  fc_1 = linear(flatten_1) {{out=5, bias=true}} : f32[N,5]
  relu_4 = relu(fc_1) : f32[N,5]
  fc_2 = linear(relu_4) {{out=3, bias=true}} : f32[N,3]
  output logits = fc_2
"""


def net(text=NET):
    return randomise_weights(parse_graph(text), np.random.default_rng(1))


def _snapshot(graph):
    return print_graph(graph), {(n.name, k): w.copy() for n in graph.nodes for k, w in n.weights.items()}


def _run_pass_and_check(graph, src, dst, **kwargs):
    """Skip, verify + signature + numeric check, and make sure the input graph was not touched."""
    text, weights = _snapshot(graph)
    result = checked(graph, skip(graph, src, dst, **kwargs))
    assert result.max_diff <= PRESERVATION_RTOL * (1 + result.max_output)
    assert print_graph(graph) == text
    for (name, key), w in weights.items():
        np.testing.assert_array_equal(graph.node(name).weights[key], w)
    assert result.record["pass"] == "skip" and (result.record["src"], result.record["dst"]) == (src, dst)
    return result


def _assert_zero_new_weights(before, after, dst):
    old, new = before.node(dst).weights["weight"], after.node(dst).weights["weight"]
    c = old.shape[1]
    np.testing.assert_array_equal(new[:, :c], old)
    assert not new[:, c:].any()
    np.testing.assert_array_equal(after.node(dst).weights["bias"], before.node(dst).weights["bias"])


def test_skip_between_maps_of_the_same_size_concats_without_pooling():
    g = net()
    result = _run_pass_and_check(g, "conv_1", "conv_2")
    new = result.graph
    assert new.node("skip_conv_1_conv_2_concat").inputs == ("relu_1", "conv_1")
    assert new.node("conv_2").inputs == ("skip_conv_1_conv_2_concat",)
    assert new.node("conv_2").weights["weight"].shape == (6, 8, 3, 3)
    _assert_zero_new_weights(g, new, "conv_2")
    assert not any(n.op in ("avgpool2d", "maxpool2d") and n.origin == "conv_1" for n in new.nodes)
    assert result.changes == [
        "skip_conv_1_conv_2_concat: concat(relu_1, conv_1), 4 + 4 = 8 channels",
        "conv_2: reads skip_conv_1_conv_2_concat, input 4 -> 8 channels, zero weights for the 4 new ones",
    ]
    assert new.consumers("relu_1") == ["skip_conv_1_conv_2_concat"]


def test_skip_to_a_smaller_map_average_pools_the_path_8x8_to_4x4():
    g = net()
    result = _run_pass_and_check(g, "relu_1", "conv_3")
    pool = result.graph.node("skip_relu_1_conv_3_pool")
    assert pool.op == "avgpool2d" and pool.attrs["kernel"] == (2, 2) and pool.attrs["stride"] == (2, 2)
    assert str(pool.type) == "f32[N,4,4,4]"
    assert result.graph.node("skip_relu_1_conv_3_concat").inputs == ("maxpool_1", "skip_relu_1_conv_3_pool")
    _assert_zero_new_weights(g, result.graph, "conv_3")
    assert ("skip_relu_1_conv_3_pool: avg pooling 2x2, stride 2x2 (8x8 -> 4x4; linear, keeps the path linear)"
            in result.changes)
    assert result.record == {"pass": "skip", "src": "relu_1", "dst": "conv_3", "pool": "avg"}


def test_skip_with_max_pooling_on_request():
    result = _run_pass_and_check(net(), "x", "conv_3", pool="max")
    assert result.graph.node("skip_x_conv_3_pool").op == "maxpool2d"
    assert "skip_x_conv_3_pool: max pooling 2x2, stride 2x2 (8x8 -> 4x4; as requested)" in result.changes


def test_skip_with_unequal_integer_ratios_pools_each_axis_by_its_own():
    g = net(f"""
      x = input() : f32[N,2,8,6]
      conv_1 = conv2d(x) {conv(3)} : f32[N,3,8,6]
      maxpool_1 = maxpool2d(conv_1) {{kernel=(4,2), stride=(4,2), padding=(0,0), ceil=false}} : f32[N,3,2,3]
      conv_2 = conv2d(maxpool_1) {conv(4)} : f32[N,4,2,3]
    """)
    result = _run_pass_and_check(g, "x", "conv_2")
    assert result.graph.node("skip_x_conv_2_pool").attrs["kernel"] == (4, 2)


def test_skip_from_a_conv_map_into_a_linear_layer_goes_through_gap_and_flatten():
    g = net()
    result = _run_pass_and_check(g, "relu_2", "fc_1")
    new = result.graph
    assert new.node("skip_relu_2_fc_1_pool").op == "global_avgpool"
    assert new.node("skip_relu_2_fc_1_flatten").inputs == ("skip_relu_2_fc_1_pool",)
    assert new.node("fc_1").weights["weight"].shape == (5, 14)
    _assert_zero_new_weights(g, new, "fc_1")
    assert "skip_relu_2_fc_1_pool: global average pooling (8x8 -> 1x1)" in result.changes


def test_skip_from_features_into_a_later_linear_layer_needs_no_path_ops():
    result = _run_pass_and_check(net(), "flatten_1", "fc_2")
    assert result.graph.node("skip_flatten_1_fc_2_concat").inputs == ("relu_4", "flatten_1")
    assert result.graph.node("fc_2").weights["weight"].shape == (3, 13)


def test_skipping_the_same_pair_twice_gives_fresh_names():
    first = _run_pass_and_check(net(), "relu_1", "conv_3").graph
    second = _run_pass_and_check(first, "relu_1", "conv_3").graph
    assert second.node("conv_3").inputs == ("skip_relu_1_conv_3_concat_2",)
    assert second.node("skip_relu_1_conv_3_concat_2").inputs == ("skip_relu_1_conv_3_concat",
                                                                 "skip_relu_1_conv_3_pool_2")
    assert second.node("conv_3").weights["weight"].shape == (8, 14, 3, 3)


def test_skip_candidates_all_apply_and_leave_out_direct_inputs():
    g = net()
    pairs = skip_candidates(g)
    assert ("relu_1", "conv_3") in pairs and ("relu_2", "fc_1") in pairs and ("x", "fc_2") in pairs
    assert ("relu_1", "conv_2") not in pairs  # relu_1 already is conv_2's input
    assert all(g.position(s) < g.position(d) for s, d in pairs)
    for src, dst in pairs:
        _run_pass_and_check(g, src, dst)


# -- every refusal -------------------------------------------------------------------------------

def test_skip_refuses_a_path_that_would_make_a_cycle():
    with pytest.raises(PassError, match="skip relu_3 -> conv_2: conv_2 already reaches relu_3, so a path from "
                                        "relu_3 into conv_2 would make a cycle"):
        skip(net(), "relu_3", "conv_2")


def test_skip_refuses_a_source_that_comes_later_in_the_graph_order():
    g = net(f"""
      x = input() : f32[N,2,8,8]
      conv_1 = conv2d(x) {conv(4)} : f32[N,4,8,8]
      conv_2 = conv2d(x) {conv(4)} : f32[N,4,8,8]
      add_1 = add(conv_1, conv_2) : f32[N,4,8,8]
    """)
    with pytest.raises(PassError, match="skip conv_2 -> conv_1: conv_2 comes after conv_1 in the graph order; a "
                                        "path must run from an earlier node into a later layer"):
        skip(g, "conv_2", "conv_1")


def test_skip_refuses_a_node_to_itself():
    with pytest.raises(PassError, match=r"skip conv_2 -> conv_2: a path from a node to itself is not a skip "
                                        r"connection \(choose a later DST\)"):
        skip(net(), "conv_2", "conv_2")


def test_skip_refuses_a_destination_that_is_not_a_layer():
    with pytest.raises(PassError, match=r"skip conv_1 -> relu_2: relu_2 is a relu; a dense path must end at a "
                                        r"conv2d or linear layer \(layers: conv_1, conv_2, conv_3, fc_1, fc_2\)"):
        skip(net(), "conv_1", "relu_2")


def test_skip_refuses_a_grouped_conv_destination():
    g = net(f"""
      x = input() : f32[N,2,8,8]
      conv_1 = conv2d(x) {conv(4)} : f32[N,4,8,8]
      conv_2 = conv2d(conv_1) {conv(4, groups=2)} : f32[N,4,8,8]
    """)
    with pytest.raises(PassError, match=r"skip x -> conv_2: conv_2 is a grouped conv \(groups=2\); the new input "
                                        r"channels would have to be split across its groups"):
        skip(g, "x", "conv_2")


def test_skip_refuses_unknown_names_and_lists_the_valid_ones():
    with pytest.raises(UnknownNodeError, match=r"no node named 'nope' in the graph \(valid: x, conv_1,"):
        skip(net(), "nope", "conv_2")
    with pytest.raises(UnknownNodeError, match=r"no layer named 'nope' in the graph \(valid: conv_1, conv_2, "
                                               r"conv_3, fc_1, fc_2\)"):
        skip(net(), "conv_1", "nope")


def test_skip_refuses_an_unknown_pooling():
    with pytest.raises(PassError, match="skip relu_1 -> conv_3: pool 'min' is not one of avg, max"):
        skip(net(), "relu_1", "conv_3", pool="min")


def test_skip_refuses_sizes_that_are_not_integer_multiples():
    g = net(f"""
      x = input() : f32[N,2,6,6]
      conv_1 = conv2d(x) {{out=3, kernel=(3,3), stride=(1,1), padding=(0,0), dilation=(1,1), groups=1, bias=true}} : f32[N,3,4,4]
      conv_2 = conv2d(conv_1) {conv(4)} : f32[N,4,4,4]
    """)
    with pytest.raises(PassError, match="skip x -> conv_2: x's spatial size 6x6 is not an integer multiple of the "
                                        "4x4 that conv_2 reads, so no pooling with kernel = stride maps one onto "
                                        "the other"):
        skip(g, "x", "conv_2")


def test_skip_refuses_values_without_spatial_axes_into_a_conv_and_values_of_other_ranks():
    g = net(f"""
      img = input() : f32[N,2,4,4]
      meta = input() : f32[N,3]
      seq = input() : f32[N,3,5]
      conv_1 = conv2d(img) {conv(4)} : f32[N,4,4,4]
      gap_1 = global_avgpool(conv_1) : f32[N,4,1,1]
      flatten_1 = flatten(gap_1) : f32[N,4]
      flatten_2 = flatten(seq) : f32[N,15]
      concat_1 = concat(flatten_1, meta, flatten_2) : f32[N,22]
      fc_1 = linear(concat_1) {{out=2, bias=true}} : f32[N,2]
    """)
    with pytest.raises(PassError, match=r"skip meta -> conv_1: meta's value f32\[N,3\] has no spatial axes but "
                                        r"conv_1 reads an NCHW value f32\[N,2,4,4\]"):
        skip(g, "meta", "conv_1")
    with pytest.raises(PassError, match=r"skip seq -> fc_1: seq's value f32\[N,3,5\] is neither NCHW nor NC"):
        skip(g, "seq", "fc_1")
    _run_pass_and_check(g, "meta", "fc_1")


# -- the local check's zero-extension rule (`local_check.extends_with_zeros`) -------------------------------
def _checked_layers(monkeypatch) -> list:
    from easc.passes import local_check

    computed = []
    real = local_check._evaluate
    monkeypatch.setattr(local_check, "_evaluate", lambda node, args: computed.append(node.name) or real(node, args))
    return computed


@pytest.mark.parametrize("src, dst", [("relu_1", "conv_2"), ("relu_1", "conv_3"), ("relu_2", "fc_1"),
                                      ("flatten_1", "fc_2")])
def test_the_local_check_keeps_a_skip_destinations_old_value_without_computing_it(src, dst, monkeypatch):
    from easc.passes.manager import PassManager

    from easc.ir import run_all

    computed = _checked_layers(monkeypatch)
    manager = PassManager(net(), seed=0)
    manager.probes.activations(manager.graph)
    computed.clear()  # the start graph's values were computed; from here on, the check's
    result = manager.run("skip", src=src, dst=dst)
    assert dst not in computed  # proven from its weights: W' = [W | 0] over concat(x, p)
    assert any(n.op == "concat" and n.name in computed for n in result.graph.nodes)  # the path is computed
    assert result.max_diff == 0
    cached = manager.probes.activations(manager.graph)  # what later checks start from: the new graph's values
    fresh = run_all(manager.graph, dict(manager.probes))
    np.testing.assert_allclose(cached[dst], fresh[dst], rtol=1e-6, atol=1e-6 * (1 + np.abs(fresh[dst]).max()))
    diff, scale = manager.finish()
    assert diff <= PRESERVATION_RTOL * (1 + scale)


def _extended(change):
    """The DST of a skip relu_1 -> conv_2 with one change made to it, and what the rule is asked with."""
    from easc.ir import run_all

    graph = net()
    result = skip(graph, "relu_1", "conv_2")
    dst = change(result.graph.node("conv_2"))
    joined = result.graph.node(dst.inputs[0])
    values = run_all(result.graph, {"x": np.random.default_rng(0).standard_normal((2, 2, 8, 8))})
    return dst, graph.node("conv_2"), result.graph, {joined.name: values[joined.name]}


def _with_weight(layer, key, where, value):
    weights = {k: np.array(w) for k, w in layer.weights.items()}
    weights[key][where] = value
    return layer.replace(weights=weights)


def test_the_zero_extension_rule_accepts_what_skip_makes():
    from easc.passes.local_check import extends_with_zeros

    dst, old, after, values = _extended(lambda layer: layer)
    assert extends_with_zeros(dst, old, after, lambda name: True, values)


@pytest.mark.parametrize("change, unchanged, values_change", [
    (lambda l: _with_weight(l, "weight", (0, 5, 1, 1), 1e-30), None, None),  # a new column not exactly 0
    (lambda l: _with_weight(l, "weight", (3, 1, 0, 2), 0.5), None, None),  # an old column changed
    (lambda l: _with_weight(l, "bias", (2,), 1e-7), None, None),  # the bias changed
    (lambda l: l.replace(attrs={**l.attrs, "padding": (0, 0)}), None, None),  # other attributes
    (lambda l: l, lambda name: False, None),  # the layer's old input does not hold its old value
    (lambda l: l, None, np.inf),  # a new input value that is not finite: 0 * inf is not 0
], ids=["new_column_nonzero", "old_column_changed", "bias", "attributes", "input_changed", "infinite_path"])
def test_the_zero_extension_rule_refuses_a_layer_that_is_not_exactly_the_old_one(change, unchanged, values_change):
    from easc.passes.local_check import extends_with_zeros

    dst, old, after, values = _extended(change)
    if values_change is not None:
        (name, value), = values.items()
        value = value.copy()
        value[0, -1, 0, 0] = values_change
        values = {name: value}
    assert not extends_with_zeros(dst, old, after, unchanged or (lambda name: True), values)


def test_a_skip_whose_new_weights_are_not_zero_is_computed_and_caught_by_the_local_check():
    from easc.passes.base import FunctionNotPreservedError, Pass
    from easc.passes.manager import PassManager
    from easc.passes.pipeline import registry

    class BrokenSkip(Pass):
        """skip, then one of DST's new (path) weights set to 0.5: no longer the old function."""

        name = "broken_skip"
        arguments = ("src", "dst")

        def candidates(self, graph):
            return []

        def apply(self, graph, *, rng, src, dst):
            result = skip(graph, src, dst)
            broken = _with_weight(result.graph.node(dst), "weight", (0, -1, 1, 1), 0.5)
            result.graph = result.graph.replace(nodes=[broken if n.name == dst else n for n in result.graph.nodes])
            return result

    manager = PassManager(net(), seed=0, passes={**registry(), "broken_skip": BrokenSkip()})
    with pytest.raises(FunctionNotPreservedError, match="broken_skip did not preserve the function: the value of "
                                                        "conv_2 differs"):
        manager.run("broken_skip", src="relu_1", dst="conv_2")
