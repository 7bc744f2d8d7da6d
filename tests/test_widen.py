"""Net2Wider (`easc.passes.widen`) and the channel flow it follows (`easc.passes.channels`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from easc.ir import UnknownNodeError, parse_graph, print_graph
from easc.passes.base import PassError, checked
from easc.passes.channels import Segment, trace_channels
from easc.passes.widen import nearest_valid_width, widen, widen_reason, widenable_layers, wider_mapping
from strategies import cnn_graphs


# -- helpers ---------------------------------------------------------------------------------
def _randomized(graph, seed=0):
    """The graph with every weight random (non-zero biases, non-trivial batchnorm statistics).

    Fresh weights have zero biases and neutral batchnorms, under which a wrong gather of a bias or
    a running mean would go unnoticed.
    """
    rng = np.random.default_rng(seed)
    nodes = []
    for node in graph.nodes:
        weights = {}
        for key, w in node.weights.items():
            if key == "var":
                weights[key] = rng.uniform(0.5, 2.0, w.shape)
            elif key == "scale":
                weights[key] = rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1, 1], w.shape)
            else:
                weights[key] = rng.normal(0.0, 0.5, w.shape)
        nodes.append(node.replace(weights={k: v.astype(np.float32) for k, v in weights.items()}))
    return graph.replace(nodes=nodes)


def _graph(text, seed=0):
    return _randomized(parse_graph(text), seed)


def _snapshot(graph):
    return print_graph(graph), {(n.name, k): np.array(w) for n in graph.nodes for k, w in n.weights.items()}


def _same_graph(a, b):
    (text_a, weights_a), (text_b, weights_b) = _snapshot(a), _snapshot(b)
    return text_a == text_b and weights_a.keys() == weights_b.keys() and all(
        np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)


def _run_pass_and_check(graph, **kwargs):
    """Run widen, verify structure / signature / outputs, and check that the input graph is untouched."""
    before_text, before_weights = _snapshot(graph)
    kwargs.setdefault("rng", np.random.default_rng(0))
    result = widen(graph, **kwargs)
    checked(graph, result)
    after_text, after_weights = _snapshot(graph)
    assert after_text == before_text
    assert after_weights.keys() == before_weights.keys()
    for key, w in before_weights.items():
        np.testing.assert_array_equal(after_weights[key], w)
    assert result.record["pass"] == "widen"
    assert [n.name for n in result.graph.nodes] == [n.name for n in graph.nodes]
    return result


def _w(graph, name, key="weight"):
    return np.asarray(graph.node(name).weights[key], dtype=np.float64)


def _mapping(n, m, seed=0):
    """The g that widen draws first from a generator seeded `seed`."""
    return wider_mapping(n, m, np.random.default_rng(seed))


CHAIN = """
graph chain
  x = input() : f32[N,2,6,6]
  conv_1 = conv2d(x) {out=4, kernel=3, padding=1} : f32[N,4,6,6]
  relu_1 = relu(conv_1) : f32[N,4,6,6]
  conv_2 = conv2d(relu_1) {out=5, kernel=3, padding=1} : f32[N,5,6,6]
  gap_1 = global_avgpool(conv_2) : f32[N,5,1,1]
  flatten_1 = flatten(gap_1) : f32[N,5]
  fc_1 = linear(flatten_1) {out=3} : f32[N,3]
  output logits = fc_1
"""


# -- the transformation ------------------------------------------------------------------------
def test_widen_conv_chain_copies_units_and_divides_the_next_layers_inputs():
    graph = _graph(CHAIN)
    result = _run_pass_and_check(graph, layer="conv_1", width=7)
    new = result.graph
    g = _mapping(4, 7)
    counts = np.bincount(g, minlength=4)
    assert result.exact and result.tolerance is None
    assert result.changes == ["conv_1: 4 -> 7 channels", "conv_2: input channels remapped (4 -> 7)"]
    assert result.record == {"pass": "widen", "layer": "conv_1", "width": 7}
    assert new.node("conv_1").attrs["out"] == 7 and str(new.node("conv_1").type) == "f32[N,7,6,6]"
    np.testing.assert_array_equal(_w(new, "conv_1"), _w(graph, "conv_1")[g])
    np.testing.assert_array_equal(_w(new, "conv_1", "bias"), _w(graph, "conv_1", "bias")[g])
    np.testing.assert_allclose(_w(new, "conv_2"), _w(graph, "conv_2")[:, g] / counts[g][None, :, None, None],
                               rtol=1e-6)
    np.testing.assert_array_equal(_w(new, "fc_1"), _w(graph, "fc_1"))


def test_widen_second_conv_of_chain_remaps_the_linear_after_global_pooling():
    result = _run_pass_and_check(_graph(CHAIN), layer="conv_2", width=10)
    assert result.changes == ["conv_2: 5 -> 10 channels", "fc_1: input columns remapped (5 -> 10)"]
    assert str(result.graph.node("fc_1").type) == "f32[N,3]"


CONV_BN_RELU_POOL = """
graph cbrp
  x = input() : f32[N,3,8,8]
  conv_1 = conv2d(x) {out=6, kernel=3, padding=1} : f32[N,6,8,8]
  bn_1 = batchnorm(conv_1) : f32[N,6,8,8]
  relu_1 = relu(bn_1) : f32[N,6,8,8]
  maxpool_1 = maxpool2d(relu_1) {kernel=2} : f32[N,6,4,4]
  conv_2 = conv2d(maxpool_1) {out=4, kernel=3, padding=1} : f32[N,4,4,4]
  bn_2 = batchnorm(conv_2) : f32[N,4,4,4]
  relu_2 = relu(bn_2) : f32[N,4,4,4]
  avgpool_1 = avgpool2d(relu_2) {kernel=2} : f32[N,4,2,2]
  gap_1 = global_avgpool(avgpool_1) : f32[N,4,1,1]
  flatten_1 = flatten(gap_1) : f32[N,4]
  dropout_1 = dropout(flatten_1) : f32[N,4]
  fc_1 = linear(dropout_1) {out=2} : f32[N,2]
  output logits = fc_1
"""


def test_widen_conv_bn_relu_pool_gathers_the_batchnorm_statistics():
    graph = _graph(CONV_BN_RELU_POOL)
    result = _run_pass_and_check(graph, layer="conv_1", width=12)
    g = _mapping(6, 12)
    assert result.changes == ["conv_1: 6 -> 12 channels", "bn_1: gathered 12 channels",
                              "conv_2: input channels remapped (6 -> 12)"]
    for key in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(_w(result.graph, "bn_1", key), _w(graph, "bn_1", key)[g])
    assert str(result.graph.node("maxpool_1").type) == "f32[N,12,4,4]"


def test_widen_conv_before_pools_and_dropout_reaches_the_classifier():
    result = _run_pass_and_check(_graph(CONV_BN_RELU_POOL), layer="conv_2", width=5)
    assert result.changes == ["conv_2: 4 -> 5 channels", "bn_2: gathered 5 channels",
                              "fc_1: input columns remapped (4 -> 5)"]


FLATTEN = """
graph flat
  x = input() : f32[N,2,6,6]
  conv_1 = conv2d(x) {out=3, kernel=3, padding=1} : f32[N,3,6,6]
  relu_1 = relu(conv_1) : f32[N,3,6,6]
  maxpool_1 = maxpool2d(relu_1) {kernel=2, stride=2} : f32[N,3,3,3]
  flatten_1 = flatten(maxpool_1) : f32[N,27]
  bn_1 = batchnorm(flatten_1) : f32[N,27]
  dropout_1 = dropout(bn_1) : f32[N,27]
  fc_1 = linear(dropout_1) {out=4} : f32[N,4]
  output logits = fc_1
"""


def test_widen_before_flatten_remaps_linear_columns_in_blocks():
    graph = _graph(FLATTEN)
    result = _run_pass_and_check(graph, layer="conv_1", width=5)
    g = _mapping(3, 5)
    counts = np.bincount(g, minlength=3)
    assert result.changes == ["conv_1: 3 -> 5 channels", "bn_1: gathered 45 channels",
                              "fc_1: input columns remapped in blocks of 9 (27 -> 45)"]
    old, new = _w(graph, "fc_1"), _w(result.graph, "fc_1")
    for j in range(5):
        np.testing.assert_allclose(new[:, 9 * j:9 * (j + 1)], old[:, 9 * g[j]:9 * (g[j] + 1)] / counts[g[j]],
                                   rtol=1e-6)
    # the batchnorm over flattened features is gathered block by block too
    cols = np.concatenate([np.arange(9 * k, 9 * (k + 1)) for k in g])
    np.testing.assert_array_equal(_w(result.graph, "bn_1", "mean"), _w(graph, "bn_1", "mean")[cols])


LINEAR = """
graph mlp
  x = input() : f32[N,6]
  fc_1 = linear(x) {out=8} : f32[N,8]
  relu_1 = relu(fc_1) : f32[N,8]
  fc_2 = linear(relu_1) {out=5} : f32[N,5]
  bn_1 = batchnorm(fc_2) : f32[N,5]
  fc_3 = linear(bn_1) {out=2} : f32[N,2]
  output y = fc_3
"""


def test_widen_linear_linear_gathers_rows_and_divides_columns():
    graph = _graph(LINEAR)
    result = _run_pass_and_check(graph, layer="fc_1", width=13)
    g = _mapping(8, 13)
    counts = np.bincount(g, minlength=8)
    assert result.changes == ["fc_1: 8 -> 13 units", "fc_2: input columns remapped (8 -> 13)"]
    np.testing.assert_allclose(_w(result.graph, "fc_2"), _w(graph, "fc_2")[:, g] / counts[g], rtol=1e-6)
    result = _run_pass_and_check(graph, layer="fc_2", width=6)
    assert result.changes == ["fc_2: 5 -> 6 units", "bn_1: gathered 6 channels",
                              "fc_3: input columns remapped (5 -> 6)"]


CONCAT = """
graph cat
  x = input() : f32[N,2,5,5]
  conv_a = conv2d(x) {out=3, kernel=3, padding=1} : f32[N,3,5,5]
  conv_b = conv2d(x) {out=4, kernel=1} : f32[N,4,5,5]
  concat_1 = concat(conv_a, conv_b) : f32[N,7,5,5]
  conv_c = conv2d(concat_1) {out=2, kernel=3, padding=1} : f32[N,2,5,5]
  gap_1 = global_avgpool(conv_c) : f32[N,2,1,1]
  flatten_1 = flatten(gap_1) : f32[N,2]
  fc_1 = linear(flatten_1) {out=3} : f32[N,3]
  output logits = fc_1
"""


def test_widen_first_concat_input_shifts_the_later_segment():
    graph = _graph(CONCAT)
    result = _run_pass_and_check(graph, layer="conv_a", width=6)
    g = _mapping(3, 6)
    counts = np.bincount(g, minlength=3)
    assert result.changes == ["conv_a: 3 -> 6 channels",
                              "concat_1: 7 -> 10 channels (segment at offset 0 widened, later ones shifted)",
                              "conv_c: input channels remapped (7 -> 10)"]
    old, new = _w(graph, "conv_c"), _w(result.graph, "conv_c")
    np.testing.assert_allclose(new[:, :6], old[:, g] / counts[g][None, :, None, None], rtol=1e-6)
    np.testing.assert_array_equal(new[:, 6:], old[:, 3:])  # conv_b's segment moved, unchanged


def test_widen_second_concat_input_remaps_only_its_segment():
    graph = _graph(CONCAT)
    result = _run_pass_and_check(graph, layer="conv_b", width=9)
    g = _mapping(4, 9)
    counts = np.bincount(g, minlength=4)
    assert "concat_1: 7 -> 12 channels (segment at offset 3 widened, later ones shifted)" in result.changes
    old, new = _w(graph, "conv_c"), _w(result.graph, "conv_c")
    np.testing.assert_array_equal(new[:, :3], old[:, :3])
    np.testing.assert_allclose(new[:, 3:], old[:, 3 + g] / counts[g][None, :, None, None], rtol=1e-6)


TWO_SEGMENTS = """
graph twice
  x = input() : f32[N,2,4,4]
  conv_a = conv2d(x) {out=3, kernel=3, padding=1} : f32[N,3,4,4]
  relu_a = relu(conv_a) : f32[N,3,4,4]
  conv_b = conv2d(x) {out=2, kernel=1} : f32[N,2,4,4]
  concat_1 = concat(relu_a, conv_b, conv_a) : f32[N,8,4,4]
  conv_c = conv2d(concat_1) {out=2, kernel=3, padding=1} : f32[N,2,4,4]
  flatten_1 = flatten(conv_c) : f32[N,32]
  fc_1 = linear(flatten_1) {out=3} : f32[N,3]
  output logits = fc_1
"""


def test_widen_layer_appearing_twice_in_a_concat_widens_both_segments_with_one_mapping():
    graph = _graph(TWO_SEGMENTS)
    flow = trace_channels(graph, "conv_a")
    assert flow.segments["concat_1"] == (Segment(0, 1), Segment(5, 1))
    result = _run_pass_and_check(graph, layer="conv_a", width=5)
    g = _mapping(3, 5)
    counts = np.bincount(g, minlength=3)
    assert "concat_1: 8 -> 12 channels (segment at offset 0, 5 widened, later ones shifted)" in result.changes
    old, new = _w(graph, "conv_c"), _w(result.graph, "conv_c")
    scale = counts[g][None, :, None, None]
    np.testing.assert_allclose(new[:, 0:5], old[:, g] / scale, rtol=1e-6)
    np.testing.assert_array_equal(new[:, 5:7], old[:, 3:5])
    np.testing.assert_allclose(new[:, 7:12], old[:, 5 + g] / scale, rtol=1e-6)


RESIDUAL = """
graph res
  x = input() : f32[N,2,6,6]
  conv_1 = conv2d(x) {out=4, kernel=3, padding=1} : f32[N,4,6,6]
  bn_1 = batchnorm(conv_1) : f32[N,4,6,6]
  relu_1 = relu(bn_1) : f32[N,4,6,6]
  conv_2 = conv2d(relu_1) {out=4, kernel=3, padding=1} : f32[N,4,6,6]
  bn_2 = batchnorm(conv_2) : f32[N,4,6,6]
  conv_3 = conv2d(relu_1) {out=4, kernel=1} : f32[N,4,6,6]
  add_1 = add(bn_2, conv_3) : f32[N,4,6,6]
  relu_2 = relu(add_1) : f32[N,4,6,6]
  conv_4 = conv2d(relu_2) {out=3, kernel=3, padding=1} : f32[N,3,6,6]
  gap_1 = global_avgpool(conv_4) : f32[N,3,1,1]
  flatten_1 = flatten(gap_1) : f32[N,3]
  fc_1 = linear(flatten_1) {out=2} : f32[N,2]
  output logits = fc_1
"""


def test_widen_into_residual_add_widens_both_producers_with_one_mapping():
    graph = _graph(RESIDUAL)
    result = _run_pass_and_check(graph, layer="conv_3", width=7)
    g = _mapping(4, 7)
    assert result.changes == [
        "conv_3: 4 -> 7 channels",
        "conv_2: 4 -> 7 channels (coupled to conv_3 through add_1: same mapping)",
        "bn_2: gathered 7 channels",
        "add_1: 4 -> 7 channels (all inputs remapped alike; widens conv_2 with the same mapping)",
        "conv_4: input channels remapped (4 -> 7)",
    ]
    np.testing.assert_array_equal(_w(result.graph, "conv_2"), _w(graph, "conv_2")[g])
    np.testing.assert_array_equal(_w(result.graph, "conv_3"), _w(graph, "conv_3")[g])
    np.testing.assert_array_equal(_w(result.graph, "bn_2", "var"), _w(graph, "bn_2", "var")[g])
    assert widen_reason(graph, "conv_2") is None


def test_widen_residual_with_the_block_input_on_the_skip_path():
    text = """
    graph res
      x = input() : f32[N,2,5,5]
      conv_1 = conv2d(x) {out=3, kernel=3, padding=1} : f32[N,3,5,5]
      relu_1 = relu(conv_1) : f32[N,3,5,5]
      conv_2 = conv2d(relu_1) {out=3, kernel=3, padding=1} : f32[N,3,5,5]
      add_1 = add(relu_1, conv_2) : f32[N,3,5,5]
      flatten_1 = flatten(add_1) : f32[N,75]
      fc_1 = linear(flatten_1) {out=2} : f32[N,2]
      output logits = fc_1
    """
    result = _run_pass_and_check(_graph(text), layer="conv_1", width=5)
    # conv_2 reads the widened relu_1 and feeds the same add: input and output remapped
    assert "conv_2: 3 -> 5 channels (coupled to conv_1 through add_1: same mapping)" in result.changes
    assert "conv_2: input channels remapped (3 -> 5)" in result.changes
    assert "fc_1: input columns remapped in blocks of 25 (75 -> 125)" in result.changes


def test_widen_refuses_a_residual_add_whose_other_input_is_a_graph_input():
    text = """
    graph res
      x = input() : f32[N,3,5,5]
      conv_1 = conv2d(x) {out=3, kernel=3, padding=1} : f32[N,3,5,5]
      add_1 = add(x, conv_1) : f32[N,3,5,5]
      gap_1 = global_avgpool(add_1) : f32[N,3,1,1]
      flatten_1 = flatten(gap_1) : f32[N,3]
      fc_1 = linear(flatten_1) {out=2} : f32[N,2]
      output logits = fc_1
    """
    graph = _graph(text)
    message = ("widen conv_1: its output feeds add_1 whose other input comes from x, a graph input, which "
               "cannot be widened; only conv2d and linear layers can be widened together")
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 6)
    assert str(err.value) == message
    assert widen_reason(graph, "conv_1") == message
    assert widenable_layers(graph) == []


ADD_OF_CONCAT = """
graph addcat
  x = input() : f32[N,2,4,4]
  conv_a = conv2d(x) {out=2, kernel=1} : f32[N,2,4,4]
  conv_b = conv2d(x) {out=2, kernel=3, padding=1} : f32[N,2,4,4]
  concat_1 = concat(conv_a, conv_b) : f32[N,4,4,4]
  conv_c = conv2d(x) {out=4, kernel=3, padding=1} : f32[N,4,4,4]
  add_1 = add(concat_1, conv_c) : f32[N,4,4,4]
  conv_d = conv2d(add_1) {out=3, kernel=1} : f32[N,3,4,4]
  flatten_1 = flatten(conv_d) : f32[N,48]
  fc_1 = linear(flatten_1) {out=2} : f32[N,2]
  output logits = fc_1
"""


def test_widen_through_concat_into_add_widens_part_of_the_other_producer():
    graph = _graph(ADD_OF_CONCAT)
    result = _run_pass_and_check(graph, layer="conv_b", width=3)
    g = _mapping(2, 3)
    assert "conv_c: 4 -> 5 channels (coupled to conv_b through add_1: its channels 2..3, same mapping)" \
        in result.changes
    old, new = _w(graph, "conv_c"), _w(result.graph, "conv_c")
    np.testing.assert_array_equal(new[:2], old[:2])
    np.testing.assert_array_equal(new[2:], old[2 + g])


def test_widen_refuses_when_the_coupled_channels_straddle_a_concat():
    with pytest.raises(PassError) as err:
        widen(_graph(ADD_OF_CONCAT), "conv_c", 8)
    assert str(err.value) == (
        "widen conv_c: its output feeds add_1 whose other input comes from concat_1 (concat), where the 4 "
        "coupled channels (from column 0) span several of the concat's inputs; widen cannot split one "
        "mapping between them")


def test_widen_refuses_channels_that_meet_themselves_at_overlapping_positions():
    text = """
    graph overlap
      x = input() : f32[N,2,4,4]
      conv_a = conv2d(x) {out=4, kernel=1} : f32[N,4,4,4]
      conv_b = conv2d(x) {out=2, kernel=1} : f32[N,2,4,4]
      concat_1 = concat(conv_a, conv_b) : f32[N,6,4,4]
      concat_2 = concat(conv_b, conv_a) : f32[N,6,4,4]
      add_1 = add(concat_1, concat_2) : f32[N,6,4,4]
      conv_c = conv2d(add_1) {out=2, kernel=1} : f32[N,2,4,4]
      flatten_1 = flatten(conv_c) : f32[N,32]
      fc_1 = linear(flatten_1) {out=2} : f32[N,2]
      output logits = fc_1
    """
    with pytest.raises(PassError, match=r"^widen conv_a: its channels reach add_1 twice at overlapping "
                                        r"positions \(columns 0\.\. and 2\.\.\); one mapping cannot widen both$"):
        widen(_graph(text), "conv_a", 6)


FLATTEN_ADD = """
graph flatadd
  x = input() : f32[N,2,2,2]
  conv_1 = conv2d(x) {out=2, kernel=1} : f32[N,2,2,2]
  flatten_1 = flatten(conv_1) : f32[N,8]
  flatten_x = flatten(x) : f32[N,8]
  fc_1 = linear(flatten_x) {out=8} : f32[N,8]
  add_1 = add(flatten_1, fc_1) : f32[N,8]
  fc_2 = linear(add_1) {out=3} : f32[N,3]
  output y = fc_2
"""


def test_widen_conv_whose_flattened_channels_meet_a_linear_widens_its_units_in_blocks():
    result = _run_pass_and_check(_graph(FLATTEN_ADD), layer="conv_1", width=3)
    assert "fc_1: 8 -> 12 units (coupled to conv_1 through add_1: in blocks of 4, same mapping)" in result.changes
    assert "fc_2: input columns remapped in blocks of 4 (8 -> 12)" in result.changes


def test_widen_refuses_a_linear_whose_units_meet_flattened_channels_out_of_line():
    with pytest.raises(PassError) as err:
        widen(_graph(FLATTEN_ADD), "fc_1", 9)
    assert str(err.value) == ("widen fc_1: its output feeds add_1 whose other input comes from flatten_1 "
                              "(flatten), whose columns do not line up with whole channels of conv_1")


# -- refusals --------------------------------------------------------------------------------
def test_widen_refuses_the_classifier_that_is_a_graph_output():
    with pytest.raises(PassError) as err:
        widen(_graph(CHAIN), "fc_1", 6)
    assert str(err.value) == ("widen fc_1: it produces the graph output 'logits'; widening it would change "
                              "the output's shape")


def test_widen_refuses_channels_that_reach_a_graph_output_through_other_ops():
    text = """
    graph feat
      x = input() : f32[N,2,4,4]
      conv_1 = conv2d(x) {out=3, kernel=1} : f32[N,3,4,4]
      relu_1 = relu(conv_1) : f32[N,3,4,4]
      conv_2 = conv2d(relu_1) {out=2, kernel=1} : f32[N,2,4,4]
      output features = relu_1
      output head = conv_2
    """
    with pytest.raises(PassError) as err:
        widen(_graph(text), "conv_1", 6)
    assert str(err.value) == ("widen conv_1: its channels reach the graph output 'features' (node relu_1); "
                              "widening would change the output's shape")


def test_widen_refuses_channels_that_reach_a_softmax():
    text = """
    graph sm
      x = input() : f32[N,4]
      fc_1 = linear(x) {out=5} : f32[N,5]
      softmax_1 = softmax(fc_1) : f32[N,5]
      fc_2 = linear(softmax_1) {out=2} : f32[N,2]
      output y = fc_2
    """
    with pytest.raises(PassError) as err:
        widen(_graph(text), "fc_1", 6)
    assert str(err.value) == "widen fc_1: its channels reach softmax_1 (softmax), which widen cannot remap"


GROUPED = """
graph grouped
  x = input() : f32[N,4,4,4]
  conv_1 = conv2d(x) {out=4, kernel=1} : f32[N,4,4,4]
  conv_2 = conv2d(conv_1) {out=4, kernel=3, padding=1, groups=2} : f32[N,4,4,4]
  add_1 = add(conv_2, conv_1) : f32[N,4,4,4]
  conv_3 = conv2d(add_1) {out=4, kernel=1} : f32[N,4,4,4]
  flatten_1 = flatten(conv_3) : f32[N,64]
  fc_1 = linear(flatten_1) {out=2} : f32[N,2]
  output y = fc_1
"""


def test_widen_through_a_grouped_conv_grows_every_group_alike_and_keeps_copies_in_their_group():
    graph = _graph(GROUPED)
    result = _run_pass_and_check(graph, layer="conv_1", width=8)
    assert result.graph.node("conv_2").attrs["groups"] == 2 and result.graph.node("conv_2").width == 8
    g = trace_channels(graph, "conv_1")
    assert g.groups == 2 and set(g.sources) == {"conv_1", "conv_2"}  # coupled through add_1
    rows = result.graph.node("conv_1").weights["weight"][:, :, 0, 0]
    old = graph.node("conv_1").weights["weight"][:, :, 0, 0]
    for j in range(8):  # new channel j of block j // 4 copies a channel of old block j // 4
        k = next(k for k in range(4) if np.array_equal(rows[j], old[k]))
        assert k // 2 == j // 4
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 7)
    assert str(err.value) == ("widen conv_1: its channels pass through a grouped conv (groups=2), so it grows by a "
                              "multiple of 2 (every group alike); 7 is 4 + 3")
    _run_pass_and_check(graph, layer="conv_2", width=6)


def test_widen_refuses_a_grouped_conv_reading_only_part_of_the_channels():
    text = GROUPED.replace("conv_2 = conv2d(conv_1) {out=4, kernel=3, padding=1, groups=2} : f32[N,4,4,4]",
                           "cat_1 = concat(conv_1, x) : f32[N,8,4,4]\n"
                           "  conv_2 = conv2d(cat_1) {out=4, kernel=3, padding=1, groups=2} : f32[N,4,4,4]")
    with pytest.raises(PassError) as err:
        widen(_graph(text), "conv_1", 6)
    assert str(err.value) == ("widen conv_1: its channels are part of the input of conv_2, a grouped conv "
                              "(groups=2): copies would make its groups unequal")


DEPTHWISE_SE = """
graph mobile
  x = input() : f32[N,3,6,6]
  conv_1 = conv2d(x) {out=4, kernel=1} : f32[N,4,6,6]
  bn_1 = batchnorm(conv_1) : f32[N,4,6,6]
  clip_1 = clip(bn_1) {min=0.0, max=6.0} : f32[N,4,6,6]
  dw_1 = conv2d(clip_1) {out=4, kernel=3, padding=1, groups=4} : f32[N,4,6,6]
  hs_1 = hardswish(dw_1) : f32[N,4,6,6]
  gap_1 = global_avgpool(hs_1) : f32[N,4,1,1]
  sq_1 = conv2d(gap_1) {out=2, kernel=1} : f32[N,2,1,1]
  silu_1 = silu(sq_1) : f32[N,2,1,1]
  ex_1 = conv2d(silu_1) {out=4, kernel=1} : f32[N,4,1,1]
  gate_1 = hardsigmoid(ex_1) : f32[N,4,1,1]
  mul_1 = mul(hs_1, gate_1) : f32[N,4,6,6]
  conv_3 = conv2d(x) {out=2, kernel=1} : f32[N,2,6,6]
  cat_0 = concat(mul_1, conv_3) : f32[N,6,6,6]
  part_1 = slice(cat_0) {start=0, end=4} : f32[N,4,6,6]
  part_2 = slice(cat_0) {start=4, end=6} : f32[N,2,6,6]
  conv_2 = conv2d(part_2) {out=2, kernel=1} : f32[N,2,6,6]
  shuffle_1 = channel_shuffle(conv_2) {groups=2} : f32[N,2,6,6]
  cat_1 = concat(part_1, shuffle_1) : f32[N,6,6,6]
  pad_1 = pad(cat_1) {pads=(1,0,1,2), value=0.0} : f32[N,6,8,8]
  lrelu_1 = leaky_relu(pad_1) {slope=0.1} : f32[N,6,8,8]
  gap_2 = global_avgpool(lrelu_1) : f32[N,6,1,1]
  flat_1 = flatten(gap_2) : f32[N,6]
  fc_1 = linear(flat_1) {out=3} : f32[N,3]
  output y = fc_1
"""


def test_widen_through_depthwise_conv_and_squeeze_excitation_copies_filters_and_gates():
    graph = _graph(DEPTHWISE_SE)
    result = _run_pass_and_check(graph, layer="conv_1", width=7)
    new = result.graph
    g = trace_channels(graph, "conv_1")
    assert "ex_1" in g.sources and "sq_1" in g.consumers  # gate coupled, squeeze conv a consumer
    dw = new.node("dw_1")
    assert dw.attrs["groups"] == dw.attrs["out"] == 7
    rows = new.node("conv_1").weights["weight"]
    for j in range(4, 7):  # a copied channel gets its original's depthwise filter and excite row
        k = next(k for k in range(4) if np.array_equal(rows[j], graph.node("conv_1").weights["weight"][k]))
        np.testing.assert_array_equal(dw.weights["weight"][j], graph.node("dw_1").weights["weight"][k])
        np.testing.assert_array_equal(new.node("ex_1").weights["weight"][j], graph.node("ex_1").weights["weight"][k])
    # the split follows: part_1 holds the widened channels, part_2 the same two channels as before
    assert (new.node("part_1").attrs["start"], new.node("part_1").attrs["end"]) == (0, 7)
    assert (new.node("part_2").attrs["start"], new.node("part_2").attrs["end"]) == (7, 9)


def test_widen_through_a_channel_shuffle_and_a_cutting_split_is_exact_and_gathers_the_copies():
    graph = _graph(DEPTHWISE_SE)
    assert widen_reason(graph, "conv_2") is None
    result = _run_pass_and_check(graph, layer="conv_2", width=4)
    shuffle = result.graph.node("shuffle_1")
    # a shuffle of 2 channels whose groups become unequal: a gather with each copy right after its channel
    assert shuffle.op == "channel_gather" and str(shuffle.type) == "f32[N,4,6,6]"
    assert any(line.startswith("shuffle_1: channel shuffle (groups=2) -> channel_gather of 4 of 4 channels")
               for line in result.changes)
    assert widen_reason(graph, "dw_1").startswith("widen dw_1: it is a depthwise conv")
    straddle = (DEPTHWISE_SE.replace("{start=0, end=4} : f32[N,4,6,6]", "{start=0, end=5} : f32[N,5,6,6]")
                .replace("{start=4, end=6} : f32[N,2,6,6]", "{start=5, end=6} : f32[N,1,6,6]")
                .replace("conv_2 = conv2d(part_2) {out=2, kernel=1} : f32[N,2,6,6]",
                         "conv_2 = conv2d(part_2) {out=2, kernel=1} : f32[N,2,6,6]")
                .replace("cat_1 = concat(part_1, shuffle_1) : f32[N,6,6,6]", "cat_1 = concat(part_1, shuffle_1) : f32[N,7,6,6]")
                .replace("f32[N,6,8,8]", "f32[N,7,8,8]").replace("gap_2 = global_avgpool(lrelu_1) : f32[N,6,1,1]",
                                                                "gap_2 = global_avgpool(lrelu_1) : f32[N,7,1,1]")
                .replace("flat_1 = flatten(gap_2) : f32[N,6]", "flat_1 = flatten(gap_2) : f32[N,7]"))
    # conv_3's two channels (columns 4, 5 of cat_0) are cut by the split at 5: each part keeps its channel
    # and the copies of it, so part_1 may become a gather and part_2 a longer slice
    flow = trace_channels(_graph(straddle), "conv_3")
    assert flow.segments["part_2"][0].chans == (1,)
    for seed in range(4):
        _run_pass_and_check(_graph(straddle), layer="conv_3", width=5, rng=np.random.default_rng(seed))


def test_widen_refuses_a_block_of_a_flatten_cut_by_a_split():
    text = """
    graph cut
      x = input() : f32[N,2,2,2]
      conv_1 = conv2d(x) {out=2, kernel=1} : f32[N,2,2,2]
      flat_1 = flatten(conv_1) : f32[N,8]
      part_1 = slice(flat_1) {start=0, end=3} : f32[N,3]
      fc_1 = linear(part_1) {out=2} : f32[N,2]
      output y = fc_1
    """
    assert widen_reason(_graph(text), "conv_1") == (
        "widen conv_1: part_1 (slice) cuts the columns of one of its channels (blocks of 4 in flat_1); one mapping "
        "cannot widen the parts")


def test_widen_unknown_layer_lists_the_valid_layer_names():
    graph = _graph(CHAIN)
    with pytest.raises(UnknownNodeError) as err:
        widen(graph, "conv_9", 8)
    assert str(err.value) == "no layer named 'conv_9' in the graph (valid: conv_1, conv_2, fc_1)"
    with pytest.raises(UnknownNodeError, match="no layer named 'relu_1'"):
        widen(graph, "relu_1", 8)
    with pytest.raises(UnknownNodeError):
        widen_reason(graph, "conv_9")


def test_widen_refuses_a_width_that_is_not_larger():
    graph = _graph(CHAIN)
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 4)
    assert str(err.value) == "widen conv_1: it is already 4 wide"
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 3)
    assert str(err.value) == ("widen conv_1: width 3 is smaller than its current width 4; widen only adds units")
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 6.5)
    assert str(err.value) == "widen conv_1: width must be a whole number, got 6.5"
    with pytest.raises(PassError) as err:
        widen(graph, "conv_1", 8, noise=-0.1)
    assert str(err.value) == "widen conv_1: noise must be a finite number >= 0, got -0.1"


def test_widenable_layers_are_the_ones_widen_accepts():
    graph = _graph(RESIDUAL)
    assert widenable_layers(graph) == ["conv_1", "conv_2", "conv_3", "conv_4"]
    assert widen_reason(graph, "fc_1").startswith("widen fc_1: it produces the graph output")
    for name in widenable_layers(graph):
        _run_pass_and_check(graph, layer=name, width=graph.node(name).width * 2)


# -- noise, determinism, immutability ----------------------------------------------------------
def test_widen_noise_touches_only_the_new_copies_outgoing_weights():
    graph = _graph(CONV_BN_RELU_POOL)
    result = _run_pass_and_check(graph, layer="conv_1", width=10, noise=0.01)
    g = _mapping(6, 10)
    counts = np.bincount(g, minlength=6)
    assert not result.exact and result.tolerance > 0
    assert result.record == {"pass": "widen", "layer": "conv_1", "width": 10, "noise": 0.01}
    assert 0 < result.max_diff
    # the widened layer's rows are exact copies: the copies compute the same activations
    np.testing.assert_array_equal(_w(result.graph, "conv_1"), _w(graph, "conv_1")[g])
    exact = _w(graph, "conv_2")[:, g] / counts[g][None, :, None, None]
    new = _w(result.graph, "conv_2")
    np.testing.assert_allclose(new[:, :6], exact[:, :6], rtol=1e-6)  # original units untouched
    assert not np.allclose(new[:, 6:], exact[:, 6:], rtol=1e-6)       # new copies perturbed
    np.testing.assert_allclose(new[:, 6:], exact[:, 6:], atol=0.1 * np.std(_w(graph, "conv_2")))


def test_widen_with_the_same_seed_gives_the_same_graph():
    graph = _graph(RESIDUAL)
    a = widen(graph, "conv_1", 9, rng=np.random.default_rng(7), noise=0.01)
    b = widen(graph, "conv_1", 9, rng=np.random.default_rng(7), noise=0.01)
    c = widen(graph, "conv_1", 9, rng=np.random.default_rng(8), noise=0.01)
    assert _same_graph(a.graph, b.graph) and a.changes == b.changes
    assert not _same_graph(a.graph, c.graph)


def test_widen_never_mutates_its_input_graph():
    graph = _graph(RESIDUAL)
    text, weights = _snapshot(graph)
    for name in ("conv_1", "conv_3", "conv_4"):
        widen(graph, name, 8, noise=0.05)
    assert _snapshot(graph)[0] == text
    assert all(np.array_equal(w, weights[k]) for k, w in _snapshot(graph)[1].items())


# -- property: random chains of widen on random graphs (strategies.cnn_graphs) preserve outputs --------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs(), data=st.data())
def test_random_widen_chains_preserve_outputs(graph, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000), label="seed"))
    for _ in range(data.draw(st.integers(1, 3), label="steps")):
        layers = widenable_layers(graph)
        if not layers:
            break
        name = data.draw(st.sampled_from(layers), label="layer")
        # through a grouped conv a layer grows by a multiple of its groups
        width = nearest_valid_width(graph, name, graph.node(name).width + data.draw(st.integers(1, 4), label="extra"))
        result = _run_pass_and_check(graph, layer=name, width=width, rng=rng)
        assert result.graph.node(name).width == width
        flow = trace_channels(graph, name)
        for other in graph.layers():  # only the coupled layers and depthwise convs on the channels' way grow
            if other.name not in flow.sources and other.name not in flow.segments:
                assert result.graph.node(other.name).width == other.width
        graph = result.graph


def test_a_conv_with_as_many_groups_as_outputs_but_two_inputs_per_group_is_grouped_not_depthwise():
    text = """
graph g
  x = input() : f32[N,3,4,4]
  conv_1 = conv2d(x) {out=4, kernel=1} : f32[N,4,4,4]
  conv_2 = conv2d(conv_1) {out=2, kernel=3, padding=1, groups=2} : f32[N,2,4,4]
  flatten_1 = flatten(conv_2) : f32[N,32]
  fc_1 = linear(flatten_1) {out=2} : f32[N,2]
  output y = fc_1
"""
    graph = _graph(text)
    assert trace_channels(graph, "conv_1").groups == 2  # a grouped consumer, not a channel-wise one
    result = _run_pass_and_check(graph, layer="conv_1", width=8)
    assert result.graph.node("conv_2").weights["weight"].shape == (2, 4, 3, 3)


def test_widen_with_noise_through_a_grouped_conv_perturbs_only_the_copies_within_the_stated_tolerance():
    graph = _graph(GROUPED)
    exact = widen(graph, "conv_1", 8, rng=np.random.default_rng(0)).graph
    noisy = checked(graph, widen(graph, "conv_1", 8, rng=np.random.default_rng(0), noise=0.05))
    assert not noisy.exact
    w_exact, w_noisy = _w(exact, "conv_2"), _w(noisy.graph, "conv_2")
    changed = np.flatnonzero(np.abs(w_noisy - w_exact).sum(axis=(0, 2, 3)) > 0)  # input columns per group block
    assert len(changed) > 0 and set(changed) <= {2, 3}  # each group's 2 copies sit after its 2 originals
