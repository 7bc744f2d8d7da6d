"""Dense blocks (`passes/dense.py`): the analysis, and dense_widen / dense_deepen checked numerically."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from easc.ir import GraphBuilder, print_graph, run_all
from easc.passes.base import PRESERVATION_RTOL, PassError, checked
from easc.passes.dense import BOTTLENECK_FACTOR, dense_blocks, dense_deepen, dense_layers, dense_widen
from easc.passes.pipeline import apply_pass
from easc.passes.widen import widen
from easc.search.densenet_start import densenet_bc, densenet_digits, dense_layer
from easc.search.start_nets import digits_small
from strategies import randomise_weights


# -- helpers ---------------------------------------------------------------------------------
def digits(seed=0, **kwargs):
    """The digits start net with non-trivial batchnorm statistics (fresh ones would hide a wrong gather)."""
    return randomise_weights(densenet_digits(seed=seed, **kwargs), np.random.default_rng(seed + 1))


def _snapshot(graph):
    return print_graph(graph), {(n.name, k): w.copy() for n in graph.nodes for k, w in n.weights.items()}


def _run_pass_and_check(graph, pass_fn, **kwargs):
    """Run the pass, verify it (structure, signature, outputs), and check the input graph is untouched."""
    text, weights = _snapshot(graph)
    result = checked(graph, pass_fn(graph, **kwargs))
    assert result.max_diff <= PRESERVATION_RTOL * (1 + result.max_output)
    assert print_graph(graph) == text
    for (name, key), w in weights.items():
        np.testing.assert_array_equal(graph.node(name).weights[key], w)
    assert result.record["pass"] == pass_fn.__name__
    return result


def _layer_names(graph):
    return [[layer.name for layer in block.layers] for block in dense_blocks(graph)]


def torch_densenet(drop=0.0):
    """A DenseNet written the torchvision way (one torch.cat of all earlier outputs per layer), lowered by fx."""
    torch = pytest.importorskip("torch")
    from easc.backends.torch import from_module
    from torch import nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
            self.norm2, self.relu2 = nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

        def forward(self, features):
            x = torch.cat(features, 1)
            out = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
            return F.dropout(out, p=drop, training=self.training) if drop > 0 else out

    class Block(nn.ModuleDict):
        def __init__(self, n, cin, growth):
            super().__init__({f"denselayer{i + 1}": Layer(cin + i * growth, growth) for i in range(n)})

        def forward(self, x):
            features = [x]
            for layer in self.values():
                features.append(layer(features))
            return torch.cat(features, 1)

    class Net(nn.Module):
        def __init__(self, growth=4, blocks=(2, 3)):
            super().__init__()
            c, parts = 2 * growth, []
            parts += [("conv0", nn.Conv2d(1, c, 3, padding=1, bias=False)), ("norm0", nn.BatchNorm2d(c)),
                      ("relu0", nn.ReLU(inplace=True))]
            for i, n in enumerate(blocks):
                parts.append((f"denseblock{i + 1}", Block(n, c, growth)))
                c += n * growth
                if i < len(blocks) - 1:
                    parts.append((f"transition{i + 1}", nn.Sequential(collections.OrderedDict(
                        norm=nn.BatchNorm2d(c), relu=nn.ReLU(), conv=nn.Conv2d(c, c // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2)))))
                    c //= 2
            parts.append(("norm5", nn.BatchNorm2d(c)))
            self.features = nn.Sequential(collections.OrderedDict(parts))
            self.classifier = nn.Linear(c, 10)

        def forward(self, x):
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1), 1))

    torch.manual_seed(0)
    graph = from_module(Net().eval(), torch.zeros(1, 1, 8, 8), name="torch_densenet")
    return randomise_weights(graph, np.random.default_rng(3))


def dense_head_graph(head: str):
    """One dense block on a stem, then `head`: 'output' (the block output is the graph output), 'add'
    (a residual add after the block), or 'two_inputs' (a second input with its own output)."""
    b = GraphBuilder(f"dense_{head}", rng=np.random.default_rng(0))
    x = b.input("x", (2, 6, 6))
    h = b.conv2d(x, 4, 3, padding=1, name="stem")
    out = dense_layer(b, h, "block1_layer1", 2, bottleneck=False)
    h = b.concat([h, out], name="block1_layer1_concat")
    if head == "output":
        b.output("features", h)
        return randomise_weights(b.build(), np.random.default_rng(1))
    if head == "add":
        h = b.add_([h, b.conv2d(x, 6, 1, name="side")], name="residual")
    h = b.flatten(b.global_avgpool(b.relu(h)))
    b.output("logits", b.linear(h, 3, name="classifier"))
    if head == "two_inputs":
        y = b.input("y", (3,))
        b.output("other", b.linear(y, 2, name="other"))
    return randomise_weights(b.build(), np.random.default_rng(1))


# -- the analysis ----------------------------------------------------------------------------
def test_dense_blocks_recognise_the_digits_start_net_layer_by_layer():
    graph = densenet_digits()
    blocks = dense_blocks(graph)
    assert [b.name for b in blocks] == ["block1", "block2"]
    assert _layer_names(graph) == [[f"block{i}_layer{j}" for j in (1, 2, 3)] for i in (1, 2)]
    first = blocks[0].layers[0]
    assert (first.input, first.output, first.bottleneck, first.growth) == (
        "stem", "block1_layer1", "block1_layer1_bottleneck", 6)
    assert first.nodes == ("block1_layer1_bottleneck_bn", "block1_layer1_bottleneck_relu", "block1_layer1_bottleneck",
                           "block1_layer1_bn", "block1_layer1_relu", "block1_layer1")
    assert blocks[0].layers[2].input == "block1_layer2_concat"
    assert (blocks[0].base, blocks[0].output) == (("stem",), "block1_layer3_concat")
    assert (blocks[1].base, blocks[1].output) == (("transition1_pool",), "block2_layer3_concat")


def test_dense_blocks_recognise_the_cifar_start_net_and_its_options():
    graph = densenet_bc(growth=8, layers=(2, 3, 1))
    assert [len(b.layers) for b in dense_blocks(graph)] == [2, 3, 1]
    assert {layer.growth for layer in dense_layers(graph).values()} == {8}
    assert graph.node("block1_layer1_bottleneck").width == BOTTLENECK_FACTOR * 8
    assert graph.node("transition1_conv").width == (16 + 2 * 8) // 2
    plain = densenet_bc(bottleneck=False, layers=2)
    assert [layer.bottleneck for layer in dense_layers(plain).values()] == [None] * 6
    assert _layer_names(plain)[2] == ["block3_layer1", "block3_layer2"]


def test_dense_blocks_recognise_a_torchvision_style_densenet_lowered_with_fx():
    graph = torch_densenet(drop=0.1)
    blocks = dense_blocks(graph)
    assert [len(b.layers) for b in blocks] == [2, 3]
    layer = blocks[1].layers[1]
    assert layer.name == "features.denseblock2.denselayer2.conv2"
    assert layer.bottleneck == "features.denseblock2.denselayer2.conv1"
    assert graph.node(layer.output).op == "dropout"  # the dropout after the conv belongs to the layer
    assert blocks[0].base == ("features.relu0",)
    assert graph.consumers(blocks[0].output) == ["features.transition1.norm"]


def test_a_plain_cnn_has_no_dense_block():
    assert dense_blocks(digits_small()) == []


# -- dense_widen -----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["block1_layer1", "block1_layer3", "block2_layer2"])
def test_dense_widen_remaps_every_later_layer_of_the_block_and_the_transition_exactly(layer):
    graph = digits()
    result = _run_pass_and_check(graph, dense_widen, layer=layer, growth=10, rng=np.random.default_rng(0))
    new = result.graph
    assert new.node(layer).width == 10
    assert new.node(f"{layer}_bottleneck").width == 40
    block, position = int(layer[5]), int(layer[-1])
    later = [f"block{block}_layer{j}_bottleneck" for j in range(position + 1, 4)]
    after = "transition1_conv" if block == 1 else "classifier"
    for consumer in later + [after]:
        assert new.node(consumer).weights["weight"].shape[1] == graph.node(consumer).weights["weight"].shape[1] + 4
        assert any(line.startswith(f"{consumer}: input") for line in result.changes)
    assert result.record == {"pass": "dense_widen", "layer": layer, "growth": 10, "bottleneck": 40}
    assert _layer_names(new) == _layer_names(graph)


def test_dense_widen_without_bottleneck_leaves_the_bottleneck_alone():
    graph = digits()
    result = _run_pass_and_check(graph, dense_widen, layer="block1_layer2", growth=8, bottleneck=False)
    assert result.graph.node("block1_layer2_bottleneck").width == 24
    assert "bottleneck" not in result.record


def test_dense_widen_keeps_a_bottleneck_that_is_already_wide_enough():
    graph = widen(digits(), "block1_layer2_bottleneck", 40).graph
    result = _run_pass_and_check(graph, dense_widen, layer="block1_layer2", growth=8)
    assert result.graph.node("block1_layer2_bottleneck").width == 40
    assert result.changes[-1] == "block1_layer2_bottleneck: kept at 40 channels (already >= 4 x 8)"


def test_dense_widen_through_one_concat_per_layer_of_a_lowered_torch_densenet():
    graph = torch_densenet(drop=0.1)
    for name in dense_layers(graph):
        result = _run_pass_and_check(graph, dense_widen, layer=name, growth=6)
        assert dense_layers(result.graph)[name].growth == 6


def test_dense_widen_with_noise_is_approximate_and_says_so():
    result = checked(digits(), dense_widen(digits(), "block1_layer1", 8, noise=0.01))
    assert not result.exact and result.tolerance > 0 and result.record["noise"] == 0.01


# -- dense_deepen ----------------------------------------------------------------------------
def test_dense_deepen_inserts_a_layer_whose_output_reaches_later_layers_with_zero_weights():
    graph = digits()
    result = _run_pass_and_check(graph, dense_deepen, after_layer="block1_layer2", rng=np.random.default_rng(0))
    new = result.graph
    assert _layer_names(new)[0] == ["block1_layer1", "block1_layer2", "deepen_block1_layer2", "block1_layer3"]
    assert new.node("deepen_block1_layer2_bottleneck_bn").inputs == ("block1_layer2_concat",)
    assert new.node("deepen_block1_layer2_concat").inputs == ("block1_layer2_concat", "deepen_block1_layer2")
    assert new.node("block1_layer3_concat").inputs[0] == "deepen_block1_layer2_concat"
    # the new channels sit at 24..29 of the running map; later consumers see them with zero weights
    for consumer, start in (("block1_layer3_bottleneck", 24), ("transition1_conv", 24)):
        w = new.node(consumer).weights["weight"]
        assert np.all(w[:, start:start + 6] == 0)
        old = graph.node(consumer).weights["weight"]
        np.testing.assert_array_equal(np.delete(w, np.s_[start:start + 6], axis=1), old)
    # the new layer itself starts to learn: He-normal convs, neutral batchnorms
    conv = new.node("deepen_block1_layer2").weights["weight"]
    assert conv.shape == (6, 24, 3, 3) and np.std(conv) > 0.05
    bn = new.node("transition1_bn").weights
    np.testing.assert_array_equal(bn["mean"][24:30], 0)
    np.testing.assert_array_equal(bn["var"][24:30], 1)
    assert new.node("deepen_block1_layer2").origin == "block1_layer2"
    assert result.record == {"pass": "dense_deepen", "after": "block1_layer2", "layer": "deepen_block1_layer2",
                             "growth": 6, "calibrated": False}


def test_dense_deepen_after_the_last_layer_of_the_last_block_feeds_the_head():
    graph = digits()
    result = _run_pass_and_check(graph, dense_deepen, after_layer="block2_layer3")
    new = result.graph
    assert new.node("final_bn").inputs == ("deepen_block2_layer3_concat",)
    assert new.node("classifier").weights["weight"].shape == (10, 39)
    assert np.all(new.node("classifier").weights["weight"][:, 33:] == 0)
    assert [b.output for b in dense_blocks(new)] == ["block1_layer3_concat", "deepen_block2_layer3_concat"]


def test_dense_deepen_with_a_calibration_batch_measures_every_new_batchnorm():
    graph = digits()
    batch = np.random.default_rng(5).standard_normal((16, 1, 8, 8)).astype(np.float32)
    result = _run_pass_and_check(graph, dense_deepen, after_layer="block1_layer1", calibration=batch)
    new = result.graph
    values = run_all(new, {"image": batch})
    for bn, columns in (("deepen_block1_layer1_bottleneck_bn", slice(None)), ("deepen_block1_layer1_bn", slice(None)),
                        ("block1_layer2_bottleneck_bn", slice(18, 24)), ("transition1_bn", slice(18, 24))):
        x = values[new.node(bn).inputs[0]][:, columns]
        w = new.node(bn).weights
        np.testing.assert_allclose(w["mean"][columns], x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w["var"][columns], x.var(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(w["scale"][columns], 1)
    # the old channels keep their statistics
    np.testing.assert_array_equal(new.node("transition1_bn").weights["mean"][:18],
                                  graph.node("transition1_bn").weights["mean"][:18])
    assert result.record["calibrated"] is True


def test_dense_deepen_in_a_lowered_torch_densenet_gives_the_new_layer_its_own_concat():
    graph = torch_densenet(drop=0.1)
    after = "features.denseblock2.denselayer1.conv2"
    batch = np.random.default_rng(2).standard_normal((8, 1, 8, 8)).astype(np.float32)
    result = _run_pass_and_check(graph, dense_deepen, after_layer=after, calibration=batch)
    new, stem = result.graph, f"deepen_{after}"
    x = run_all(new, {"x": batch})["cat_6"][:, 12:16]  # the new channels, as the head's batchnorm sees them
    np.testing.assert_allclose(new.node("features.norm5").weights["var"][12:16], x.var(axis=(0, 2, 3)), rtol=1e-5)
    assert new.node(f"{stem}_input").inputs == ("features.transition1.pool", "dropout_2")
    assert new.node(f"{stem}_dropout").attrs["p"] == 0.1
    for concat in ("cat_4", "cat_5", "cat_6"):  # every later concat reads the new output right after layer 1's
        inputs = new.node(concat).inputs
        assert inputs[inputs.index("dropout_2") + 1] == f"{stem}_dropout"
    assert [len(layers) for layers in _layer_names(new)] == [2, 4]
    for name in dense_layers(new):  # and the result is a DenseNet the passes act on again
        _run_pass_and_check(new, dense_deepen, after_layer=name)


def test_dense_deepen_twice_after_the_same_layer_numbers_the_new_names():
    graph = dense_deepen(digits(), "block1_layer3").graph
    graph = _run_pass_and_check(graph, dense_deepen, after_layer="block1_layer3").graph
    graph = _run_pass_and_check(graph, dense_deepen, after_layer="deepen_block1_layer3").graph
    assert _layer_names(graph)[0][3:] == ["deepen_block1_layer3_2", "deepen_block1_layer3", "deepen_block1_layer3_3"]
    assert graph.node("deepen_block1_layer3_3").origin == "deepen_block1_layer3"


def test_dense_passes_are_registered_and_verified_by_apply_pass():
    graph = digits()
    widened = apply_pass(graph, "dense_widen", layer="block2_layer1", growth=8)
    deeper = apply_pass(widened.graph, "dense_deepen", after_layer="block2_layer1")
    assert deeper.max_diff is not None and deeper.graph.node("deepen_block2_layer1").width == 8


def test_widen_and_deepen_compose_over_many_random_choices():
    graph, rng = digits(), np.random.default_rng(7)
    for _ in range(6):
        names = list(dense_layers(graph))
        name = names[rng.integers(len(names))]
        if rng.random() < 0.5:
            graph = _run_pass_and_check(graph, dense_widen, layer=name, growth=dense_layers(graph)[name].growth + 2,
                                        rng=rng).graph
        else:
            graph = _run_pass_and_check(graph, dense_deepen, after_layer=name, rng=rng).graph
    assert sum(len(b.layers) for b in dense_blocks(graph)) >= 6


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn, kwargs", [(dense_widen, {"growth": 8}), (dense_deepen, {})])
def test_dense_passes_refuse_a_node_that_is_not_a_dense_layer_and_list_the_layers(fn, kwargs):
    with pytest.raises(PassError, match=r"transition1_conv: not a layer of a dense block \(transition1_conv is a "
                                        r"conv2d; dense layers: block1_layer1, block1_layer2"):
        fn(digits(), "transition1_conv", **kwargs)
    with pytest.raises(PassError, match=r"not a layer of a dense block \(there is no node named 'nope'"):
        fn(digits(), "nope", **kwargs)


def test_dense_passes_refuse_a_graph_without_dense_blocks():
    with pytest.raises(PassError, match=r"dense_deepen conv_1: the graph has no dense block \(a dense layer is "):
        dense_deepen(digits_small(), "conv_1")


@pytest.mark.parametrize("growth, message", [(6, "growth 6 is not larger than its current growth 6"),
                                             (4, "growth 4 is not larger"),
                                             (7.5, "growth must be a whole number, got 7.5")])
def test_dense_widen_refuses_a_growth_that_does_not_grow(growth, message):
    with pytest.raises(PassError, match=message):
        dense_widen(digits(), "block1_layer1", growth)


def test_dense_passes_refuse_a_block_whose_output_is_a_graph_output():
    graph = dense_head_graph("output")
    assert _layer_names(graph) == [["block1_layer1"]]
    with pytest.raises(PassError, match="widen block1_layer1: its channels reach the graph output 'features'"):
        dense_widen(graph, "block1_layer1", 4)
    with pytest.raises(PassError, match="dense_deepen block1_layer1: the running map after it, block1_layer1_concat, "
                                        "is the graph output 'features'"):
        dense_deepen(graph, "block1_layer1")


def test_dense_deepen_refuses_a_flat_block_whose_concat_is_a_graph_output():
    b = GraphBuilder("flat", rng=np.random.default_rng(0))
    stem = b.conv2d(b.input("x", (2, 6, 6)), 4, 3, padding=1, name="stem")
    l1 = dense_layer(b, b.concat([stem]), "l1", 2, bottleneck=False)
    l2 = dense_layer(b, b.concat([stem, l1]), "l2", 2, bottleneck=False)
    b.output("features", b.concat([stem, l1, l2]))
    graph = b.build()
    assert _layer_names(graph) == [["l1", "l2"]]
    with pytest.raises(PassError, match="dense_deepen l1: the new layer's output cannot join the block: "
                                        "its channels reach the graph output 'features'"):
        dense_deepen(graph, "l1")


def test_dense_deepen_refuses_when_the_new_channels_would_reach_a_residual_add():
    with pytest.raises(PassError, match=r"the new layer's channels would reach residual \(add\), whose inputs then no "
                                        r"longer fit \(add inputs must have the same type: f32\[N,8,6,6\] vs "
                                        r"f32\[N,6,6,6\]\); only concats, channel-wise ops"):
        dense_deepen(dense_head_graph("add"), "block1_layer1")


def test_dense_deepen_needs_a_dict_calibration_batch_for_a_graph_with_several_inputs():
    graph = dense_head_graph("two_inputs")
    with pytest.raises(PassError, match=r"the graph has 2 inputs \(x, y\); give the calibration batch as a dict"):
        dense_deepen(graph, "block1_layer1", calibration=np.zeros((2, 2, 6, 6), np.float32))
    batch = {"x": np.ones((2, 2, 6, 6), np.float32), "y": np.ones((2, 3), np.float32)}
    _run_pass_and_check(graph, dense_deepen, after_layer="block1_layer1", calibration=batch)
