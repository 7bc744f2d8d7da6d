"""The local check on the channels a rewrite touched (`passes/local_channels.py`): dense widens and deepens are
checked from the changed channels of each later concatenation, with the same verdicts as a whole-value check."""

import numpy as np
import pytest

from easc.ir import run_all
from easc.passes import local_channels
from easc.passes.base import FunctionNotPreservedError, Pass
from easc.passes.manager import PassManager
from easc.passes.pipeline import registry
from easc.search.densenet_start import densenet_digits
from strategies import randomise_weights
from test_dense import torch_densenet


def digits(seed=0):
    return randomise_weights(densenet_digits(seed=seed), np.random.default_rng(seed + 1))


def _spy(monkeypatch) -> list:
    """Names of the linear readers checked from their touched channels only."""
    calls = []
    real = local_channels.linear_delta

    def spy(node, old, patch, old_input, rows=None):
        delta = real(node, old, patch, old_input, rows=rows)
        if delta is not None and rows is None:
            calls.append(node.name)
        return delta

    monkeypatch.setattr(local_channels, "linear_delta", spy)
    return calls


def _assert_activations_are_the_new_graphs(manager):
    """What the check caches for the new graph is what the new graph computes (float32 rounding apart)."""
    cached = manager.probes.activations(manager.graph)
    for name, value in run_all(manager.graph, dict(manager.probes)).items():
        np.testing.assert_allclose(cached[name], value, rtol=1e-5, atol=1e-5 * (1 + np.abs(value).max()),
                                   err_msg=name)


@pytest.mark.parametrize("pass_name, args", [
    ("dense_widen", {"layer": "block1_layer1", "growth": 10}),
    ("dense_widen", {"layer": "block2_layer2", "growth": 8}),
    ("dense_deepen", {"after_layer": "block1_layer1"}),
    ("widen", {"layer": "block1_layer2", "width": 9}),
])
def test_a_dense_rewrite_is_checked_on_its_touched_channels_and_caches_the_new_graphs_values(
        monkeypatch, pass_name, args):
    calls = _spy(monkeypatch)
    # a widen's copies are folded however few the positions (`FOLD_POSITIONS`: these are 8x8 digits)
    monkeypatch.setattr(local_channels, "FOLD_POSITIONS", 0)
    manager = PassManager(digits(), seed=0)
    manager.run(pass_name, **args)
    assert calls  # the later layers' first convs were checked from the changed channels
    assert any(name.endswith("_bottleneck") or name.startswith("transition") for name in calls)
    _assert_activations_are_the_new_graphs(manager)
    manager.run("dense_widen", layer="block1_layer3", growth=9)  # a later check starts from those values
    _assert_activations_are_the_new_graphs(manager)
    diff, scale = manager.finish()
    assert diff <= 1e-5 * (1 + scale)


def test_a_torchvision_style_densenet_one_concat_per_layer_is_checked_on_its_touched_channels(monkeypatch):
    calls = _spy(monkeypatch)
    graph = torch_densenet()
    manager = PassManager(graph, seed=0)
    first = manager.candidates("dense_widen")[0]
    manager.run("dense_widen", layer=first["layer"], growth=graph.node(first["layer"]).width * 2)
    assert calls
    _assert_activations_are_the_new_graphs(manager)
    manager.finish()


class PerturbingDense(Pass):
    """A broken dense widen: correct, then one number of one weight of a later layer changed, the node declared
    rewritten (inside the region the local check evaluates)."""

    name = "broken_dense"
    arguments = ("layer", "victim", "key", "where")

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, layer, victim, key, where):
        result = registry()["dense_widen"].apply(graph, rng=rng, layer=layer, growth=10)
        node = result.graph.node(victim)
        weight = np.array(node.weights[key])
        weight[where] += 0.5
        changed = node.replace(weights={**node.weights, key: weight})
        result.graph = result.graph.replace(nodes=[changed if n.name == victim else n for n in result.graph.nodes])
        result.rewritten = result.rewritten | {victim}
        return result


# block1_layer1 grows 6 -> 10 channels: in block1_layer3's input (stem 12, layer1 10, layer2 6) channels 0-11
# and 22-27 are the old ones (shared), 12-21 the changed ones (touched)
@pytest.mark.parametrize("victim, key, where", [
    ("block1_layer3_bottleneck", "weight", (0, 3, 0, 0)),  # a shared input channel of a later first conv
    ("block1_layer3_bottleneck", "weight", (5, 25, 0, 0)),  # shared, after the touched ones
    ("block1_layer3_bottleneck", "weight", (2, 15, 0, 0)),  # a touched input channel
    ("block1_layer3_bottleneck_bn", "scale", (4,)),  # a later batchnorm, shared channel
    ("block1_layer3_bottleneck_bn", "bias", (14,)),  # a later batchnorm, touched channel
    ("transition1_conv", "weight", (1, 29, 0, 0)),  # the transition, shared
])
def test_a_dense_widen_that_changes_a_later_layer_is_caught_by_the_local_check(victim, key, where):
    manager = PassManager(digits(), passes={**registry(), "broken_dense": PerturbingDense()})
    with pytest.raises(FunctionNotPreservedError, match="broken_dense did not preserve the function: the value "
                                                        "of (block1_layer3_bottleneck|transition1_conv) differs"):
        manager.run("broken_dense", layer="block1_layer1", victim=victim, key=key, where=where)


def test_a_patch_is_assembled_from_its_runs_and_touched_channels():
    old = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    touched = -np.ones((2, 2, 3))
    patch = local_channels.Patch((2, 6, 3), [(0, 0, 2), (4, 3, 2)], np.array([2, 3]), touched)
    new = patch.assemble(old)
    np.testing.assert_array_equal(new[:, :2], old[:, :2])
    np.testing.assert_array_equal(new[:, 4:], old[:, 3:])
    np.testing.assert_array_equal(new[:, 2:4], touched)
    np.testing.assert_array_equal(patch.old_index(5), [2])


def test_a_pending_value_is_computed_on_the_channels_asked_for_as_the_whole_value_has_them():
    graph = digits()
    manager = PassManager(graph, seed=0)
    cached = manager.probes.activations(graph)
    exact = run_all(graph, dict(manager.probes))
    index = np.array([0, 5, 13, 17, 23])
    for name in ("block1_layer3_bottleneck_relu", "block1_layer2_concat", "transition1_relu"):
        assert name in cached.pending  # recomputed from the layers' values when read
        np.testing.assert_allclose(cached.channels(name, index), exact[name][:, index], rtol=1e-6, atol=1e-6)
        assert name in cached.pending  # and nothing of it was kept


class BrokenWiden(Pass):
    """widen, then one number of the widened layer changed (`row`) or its channel claim scrambled (`claim`)."""

    name = "broken_widen"
    arguments = ("layer", "width", "row", "claim")

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, layer, width, row=None, claim=False):
        result = registry()["widen"].apply(graph, rng=rng, layer=layer, width=width)
        if row is not None:
            node = result.graph.node(layer)
            weight = np.array(node.weights["weight"])
            weight[row].flat[0] += 0.5
            changed = node.replace(weights={**node.weights, "weight": weight})
            result.graph = result.graph.replace(nodes=[changed if n.name == layer else n
                                                       for n in result.graph.nodes])
        if claim:
            result.channels = {k: np.roll(v, 1) for k, v in result.channels.items()}
        return result


def _copied_spy(monkeypatch) -> list:
    """Names of the widened layers whose value was proven the old one gathered (`linear_delta` with a claim)."""
    proven = []
    real = local_channels.linear_delta

    def spy(node, old, patch, old_input, rows=None):
        delta = real(node, old, patch, old_input, rows=rows)
        if rows is not None and delta is not None and not delta.size:
            proven.append(node.name)
        return delta

    monkeypatch.setattr(local_channels, "linear_delta", spy)
    return proven


def test_a_widened_layer_whose_rows_are_copies_is_not_evaluated_and_its_value_is_the_old_one_gathered(monkeypatch):
    from test_pass_manager import net

    proven = _copied_spy(monkeypatch)
    manager = PassManager(net(), seed=0)
    manager.run("widen", layer="conv_3", width=13)
    assert proven == ["conv_3"]
    _assert_activations_are_the_new_graphs(manager)
    manager.finish()


@pytest.mark.parametrize("row", [2, 11])  # an original row, a new copy (conv_3: 8 -> 13 channels)
def test_a_widened_layer_with_a_changed_row_is_evaluated_and_caught(monkeypatch, row):
    from test_pass_manager import net

    proven = _copied_spy(monkeypatch)
    manager = PassManager(net(), passes={**registry(), "broken_widen": BrokenWiden()})
    with pytest.raises(FunctionNotPreservedError, match="broken_widen did not preserve the function"):
        manager.run("broken_widen", layer="conv_3", width=13, row=row)
    assert proven == []


def test_a_wrong_channel_claim_only_costs_the_fast_path(monkeypatch):
    from test_pass_manager import net

    proven = _copied_spy(monkeypatch)
    manager = PassManager(net(), passes={**registry(), "broken_widen": BrokenWiden()})
    manager.run("broken_widen", layer="conv_3", width=13, claim=True)  # the pass is right, its claim is not
    assert proven == []
    _assert_activations_are_the_new_graphs(manager)


def test_a_chain_of_concatenations_is_worked_out_once_per_check_and_let_go_after_it(monkeypatch):
    """A dense block exported as a chain (concat_k = concat(concat_k-1, y_k)): each later layer's check asks for
    the widened layer's old channels through every concatenation down the chain. Each concatenation of the chain
    is worked out at most once per check (entered at most twice: once worked out, once found), the values are
    right, read-only while shared, and let go when the check ends."""
    from easc.passes.local_check import Activations

    graph = randomise_weights(densenet_digits(layers=10, growth=4, seed=0), np.random.default_rng(1))
    entered, handed_out = {}, []
    real = Activations.channels

    def counting(self, name, index):
        entered[name] = entered.get(name, 0) + 1
        value = real(self, name, index)
        handed_out.append((self, name, index, value))
        return value

    monkeypatch.setattr(Activations, "channels", counting)
    manager = PassManager(graph, seed=0)
    before = manager.probes.activations(graph)
    exact = run_all(graph, dict(manager.probes))
    manager.run("dense_widen", layer="block1_layer1", growth=8)
    concats = {name: n for name, n in entered.items() if graph.node(name).op == "concat"}
    assert len(concats) >= 9  # the chain was followed down from the later layers
    assert max(concats.values()) <= 2
    for cached, name, index, value in handed_out:
        if cached is before:
            np.testing.assert_allclose(value, exact[name][:, index], rtol=1e-6, atol=1e-6, err_msg=name)
        if graph.node(name).op == "concat":
            assert not value.flags.writeable
    assert before._concat_channels == {}
    _assert_activations_are_the_new_graphs(manager)
    manager.finish()


def test_the_remaps_of_every_value_are_each_values_own_remap_and_alike_values_share_one():
    from easc.passes.channels import trace_channels
    from easc.passes.widen import wider_mapping

    graph = densenet_digits(layers=4, growth=4, seed=0)
    flow = trace_channels(graph, "block1_layer1")
    g = wider_mapping(flow.width, flow.width + 3, np.random.default_rng(0), flow.groups)
    remaps = flow.remaps(g)
    assert list(remaps) == list(flow.segments)
    for value, remap in remaps.items():
        alone = flow.remap(value, g)
        for field in ("index", "divisor", "new", "unit"):
            np.testing.assert_array_equal(getattr(remap, field), getattr(alone, field), err_msg=f"{value} {field}")
    for a in remaps:
        for b in remaps:
            alike = (flow.segments[a], flow.channels[a]) == (flow.segments[b], flow.channels[b])
            assert (remaps[a] is remaps[b]) == alike
