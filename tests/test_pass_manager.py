"""The pass manager (`easc.passes.manager`): the pass protocol, the local check of the rewritten region, the
end-to-end check, the refusal and size policies, and the one name authority passes name through."""

import numpy as np
import pytest

from easc.ir import GraphBuilder, Namespace, verify
from easc.ir.builder import randomise_weights
from easc.passes import PassError, PassResult, apply_pass
from easc.passes.base import FunctionNotPreservedError, Pass
from easc.passes.manager import PassManager, SizeLimitError
from easc.passes.pipeline import registry


def net(seed=1):
    """conv-bn-relu, a residual block, a head: 14 nodes with non-trivial weights."""
    b = GraphBuilder("net", rng=np.random.default_rng(0))
    x = b.input("x", (3, 8, 8))
    h = b.relu(b.batchnorm(b.conv2d(x, 8, 3, padding=1)))
    r = b.relu(b.batchnorm(b.conv2d(h, 8, 3, padding=1)))
    h = b.relu(b.add_([h, r]))
    h = b.relu(b.batchnorm(b.conv2d(h, 8, 3, padding=1)))
    b.output("logits", b.linear(b.flatten(b.global_avgpool(h)), 5))
    return randomise_weights(b.build(), np.random.default_rng(seed))


class Perturbing(Pass):
    """A broken pass: a correct deepen after `after`, then one weight of `victim` nudged, the victim declared
    rewritten (inside the region) or not (outside it)."""

    name = "broken"
    arguments = ("after", "victim", "declare")

    def candidates(self, graph):
        return []

    def apply(self, graph, *, rng, after, victim, declare):
        result = registry()["deepen"].apply(graph, rng=rng, after=after)
        node = result.graph.node(victim)
        weight = np.array(node.weights["weight"])
        weight.flat[0] += 0.5
        changed = node.replace(weights={**node.weights, "weight": weight})
        result.graph = result.graph.replace(nodes=[changed if n.name == victim else n for n in result.graph.nodes])
        if declare:
            result.rewritten = result.rewritten | {victim}
        return result


def broken_manager(graph):
    return PassManager(graph, passes={**registry(), "broken": Perturbing()})


def test_a_chain_in_one_manager_preserves_the_function_and_checks_only_each_region():
    graph = net()
    manager = PassManager(graph, seed=3)
    targets = {c["layer"]: graph.node(c["layer"]).width * 2 for c in manager.candidates("widen")}
    for layer, width in targets.items():
        if manager.graph.node(layer).width < width:  # conv_1 and conv_2 are coupled through the add
            manager.run("widen", layer=layer, width=width)
    manager.run("deepen", after="relu_3")
    manager.run("skip", src="relu_1", dst="conv_3")
    manager.run("widen_kernel", layer="conv_3")
    diff, scale = manager.finish()
    assert diff <= 1e-5 * (1 + scale)
    assert [s.name for s in manager.stats][-3:] == ["deepen", "skip", "widen_kernel"]
    # the deepen's region is its block and the reader of its output, not the graph
    deepen = manager.stats[-3]
    assert 0 < deepen.evaluated < len(manager.graph) // 2
    assert manager.graph.node("conv_1").width == 16 and "deepen_relu_3" in manager.graph
    verify(manager.graph)
    assert graph.node("conv_1").width == 8  # the input graph is untouched


def test_a_pass_that_perturbs_a_weight_inside_its_region_is_caught_by_the_local_check():
    manager = broken_manager(net())
    with pytest.raises(FunctionNotPreservedError, match="broken did not preserve the function: the value of "
                                                        "conv_2 differs"):
        manager.run("broken", after="relu_1", victim="conv_2", declare=True)


def test_a_pass_that_perturbs_a_weight_outside_its_region_is_caught_by_the_end_to_end_check():
    manager = broken_manager(net())
    result = manager.run("broken", after="relu_1", victim="conv_3", declare=False)  # the local check trusts R
    assert result.max_diff <= 1e-5 * (1 + result.max_output)
    with pytest.raises(FunctionNotPreservedError, match="end to end: the final model did not preserve"):
        manager.finish()


def test_a_pass_that_declares_no_region_is_checked_on_every_node_it_did_not_share():
    class Undeclared(Perturbing):
        def apply(self, graph, **args):
            result = super().apply(graph, **args)
            result.rewritten = None
            return result

    manager = PassManager(net(), passes={**registry(), "broken": Undeclared()})
    with pytest.raises(FunctionNotPreservedError, match="the value of conv_3 differs"):
        manager.run("broken", after="relu_1", victim="conv_3", declare=False)


def test_a_pass_with_stated_noise_is_checked_within_its_tolerance_and_later_passes_see_its_values():
    manager = PassManager(net(), seed=0)
    result = manager.run("widen", layer="conv_2", width=24, noise=0.01)
    assert not result.exact and 0 < result.max_diff <= result.tolerance * (1 + result.max_output)
    # downstream of the noise the cached values are pending: a later exact pass on them computes them from
    # the noisy graph, so it compares like with like
    manager.run("widen", layer="conv_3", width=12)
    manager.run("deepen", after="relu_3")
    diff, scale = manager.finish()
    assert 0 < diff <= (1e-5 + manager.noise_tolerance) * (1 + scale)


def test_a_chain_lets_each_graph_and_its_activations_go():
    import gc
    import weakref

    manager = PassManager(net())
    manager.run("widen", layer="conv_3", width=12)
    first = weakref.ref(manager.graph)
    manager.run("deepen", after="relu_3")
    gc.collect()
    assert first() is None and len(manager.probes._activations) == 1


def test_the_skip_policy_turns_a_refusal_into_a_recorded_action_and_keeps_the_graph():
    graph = net()
    manager = PassManager(graph, on_refusal="skip")
    result = manager.run("deepen", after="fc_1")
    assert result.graph is graph and manager.graph is graph
    assert result.action() == {"pass": "deepen", "after": "fc_1",
                               "skipped": result.skipped} and "graph output 'logits'" in result.skipped
    assert manager.stats[-1].skipped == result.skipped
    with pytest.raises(PassError, match="graph output 'logits'"):
        PassManager(graph).run("deepen", after="fc_1")


def test_a_request_over_the_size_limit_is_refused_before_anything_is_allocated():
    manager = PassManager(net(), max_params=100_000)
    with pytest.raises(SizeLimitError, match=r"widen layer=conv_1, width=1000000000: the result would have "
                                             r"about .* parameters, over the limit of 1e\+05"):
        manager.run("widen", layer="conv_1", width=1_000_000_000)
    with pytest.raises(SizeLimitError, match="deepen"):
        manager.run("deepen", after="relu_1", kernel=100_001)
    manager.run("widen", layer="conv_1", width=12)  # a sane request still runs


def test_each_registered_pass_declares_its_arguments_candidates_and_reasons():
    graph = net()
    passes = registry()
    assert set(passes) == {"widen", "widen_many", "deepen", "skip", "widen_kernel", "dense_widen", "dense_deepen"}
    assert passes["widen_many"].candidates(graph) == [{"layers": ["conv_1", "conv_2", "conv_3"]}]
    assert passes["widen"].arguments[:2] == ("layer", "width")
    assert {"layer": "conv_1"} in passes["widen"].candidates(graph)
    assert {"layer": "fc_1"} not in passes["widen"].candidates(graph)
    assert "graph output 'logits'" in passes["widen"].reason(graph, layer="fc_1")
    assert passes["widen"].reason(graph, layer="conv_1", width=4) is not None  # narrower
    assert passes["widen"].reason(graph, layer="conv_1", width=16) is None
    assert {"src": "relu_1", "dst": "conv_3"} in passes["skip"].candidates(graph)
    assert "cycle" in passes["skip"].reason(graph, src="relu_3", dst="conv_1") or \
        "after" in passes["skip"].reason(graph, src="relu_3", dst="conv_1")
    assert passes["dense_widen"].candidates(graph) == []
    assert all(set(c) == {"after"} for c in passes["deepen"].candidates(graph))


def test_apply_pass_is_a_one_pass_manager_and_keeps_its_signature():
    graph = net()
    result = apply_pass(graph, "widen", rng=np.random.default_rng(0), layer="conv_3", width=12)
    assert isinstance(result, PassResult) and result.max_diff is not None
    assert result.rewritten >= {"conv_3", "fc_1"}
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        apply_pass(graph, "nope")


def test_the_before_and_after_graphs_share_every_node_the_pass_did_not_rewrite():
    graph = net()
    result = PassManager(graph).run("widen", layer="conv_3", width=12)
    for node in result.graph.nodes:
        if node.name not in result.rewritten:
            assert node is graph.node(node.name)
            for key, w in node.weights.items():
                assert w is graph.node(node.name).weights[key]


def test_a_third_deepen_of_a_node_is_numbered_from_its_base_name():
    manager = PassManager(net())
    for _ in range(3):
        manager.run("deepen", after="relu_1")
    names = {n.name for n in manager.graph.nodes}
    assert {"deepen_relu_1", "deepen_relu_1_2", "deepen_relu_1_3", "deepen_relu_1_bn_3"} <= names
    assert "deepen_relu_1_2_2" not in names


def test_the_name_authority_appends_counts_from_the_base_and_never_hands_out_a_name_twice():
    names = Namespace(["conv_1", "deepen_conv_1", "deepen_conv_1_2"])
    assert names.fresh("deepen_conv_1") == "deepen_conv_1_3"
    assert names.fresh("deepen_conv_1") == "deepen_conv_1_4"
    assert names.fresh("relu") == "relu"
    assert names.counter("conv") == "conv_2"
    assert names.counter("Conv", start=0) == "Conv_0"
    assert names.fresh_stem("deepen_conv_1", ["", "_bn"]) == "deepen_conv_1_5"
    assert "deepen_conv_1_5_bn" in names


def test_a_large_linear_layer_is_checked_a_block_of_rows_at_a_time_with_the_same_result(monkeypatch):
    import easc.passes.local_check as local_check

    graph = net()
    whole = PassManager(graph).run("widen", layer="conv_3", width=12)
    monkeypatch.setattr(local_check, "CHUNK", 7)  # fc_1 (5 x 12) now goes in blocks of one row
    blocks = PassManager(graph).run("widen", layer="conv_3", width=12)
    # the same products, summed in blocks: equal up to float64 rounding (BLAS picks its kernel by shape)
    assert blocks.max_diff == pytest.approx(whole.max_diff, rel=1e-9, abs=1e-15)


def test_a_large_conv_is_checked_a_block_of_output_channels_at_a_time_with_the_same_result(monkeypatch):
    import easc.passes.local_check as local_check

    graph = net()
    whole = PassManager(graph).run("deepen", after="relu_2")
    monkeypatch.setattr(local_check, "CHUNK", 100)  # the new 8 x 8 x 3 x 3 conv goes in blocks of one filter
    blocks = PassManager(graph).run("deepen", after="relu_2")
    assert blocks.max_diff == pytest.approx(whole.max_diff, rel=1e-9, abs=1e-15)
    broken = broken_manager(graph)
    monkeypatch.setattr(local_check, "CHUNK", 50)  # conv_2 (8 x 8 x 3 x 3) in blocks of one filter
    with pytest.raises(FunctionNotPreservedError, match="the value of conv_2 differs"):
        broken.run("broken", after="relu_1", victim="conv_2", declare=True)


def test_verifying_against_an_earlier_graph_checks_new_weights_but_not_the_unchanged_structure():
    from easc.ir import VerificationError

    graph = net()
    node = graph.node("conv_2")
    retrained = graph.replace(nodes=[node.replace(weights={**node.weights, "bias": node.weights["bias"] + 1})
                                     if n is node else n for n in graph.nodes])
    verify(retrained, since=graph)
    broken = graph.replace(nodes=[node.replace(weights={**node.weights, "bias": np.full(8, np.nan)})
                                  if n is node else n for n in graph.nodes])
    with pytest.raises(VerificationError, match="conv_2.*NaN"):
        verify(broken, since=graph)
    wrong = graph.replace(nodes=[node.replace(weights={**node.weights, "bias": np.zeros(3)})
                                 if n is node else n for n in graph.nodes])
    with pytest.raises(VerificationError, match="has shape"):
        verify(wrong, since=graph)


@pytest.mark.parametrize("seed", range(3))
def test_after_a_noisy_dense_widen_the_kept_activations_are_the_new_graphs_and_a_deepen_checks_clean(seed):
    """A noisy widen in a dense block changes a later layer's value (within its tolerance); the layers after it
    read the concatenation of every earlier output, so the region evaluated them from that layer's old value.
    Those must not be kept as the new graph's values: a later exact pass would be compared against them (the
    DenseNet search's children failed `dense_deepen` on exactly this, by the noise's size)."""
    from easc.ir import probe_inputs
    from easc.ir.interpret import run_all
    from easc.passes.base import ProbeSet
    from easc.search.start_nets import build_start_net

    graph = build_start_net("densenet-digits", (1, 8, 8), 10, seed=seed)
    probes = ProbeSet(probe_inputs(graph, 4, seed=seed))
    manager = PassManager(graph, rng=np.random.default_rng(seed), probes=probes, on_refusal="raise")
    manager.run("dense_widen", layer="block1_layer1", growth=8, noise=0.01)
    kept, fresh = probes.activations(manager.graph), run_all(manager.graph, dict(probes))
    for node in manager.graph.nodes:
        if node.name in kept:
            expected = fresh[node.name]
            assert np.max(np.abs(kept[node.name] - expected)) <= 1e-5 * (1 + np.max(np.abs(expected))), node.name
    for after in ("block1_layer1", "block1_layer2", "block2_layer3"):
        manager.run("dense_deepen", after_layer=after)  # exact: checked against the kept values


# -- the end-to-end check's float32 margin (`PassManager.finish`, start_float32) ------------------------------
def _finished_chain():
    manager = PassManager(net(), seed=0)
    manager.run("widen", layer=manager.candidates("widen")[0]["layer"], width=12)
    return manager


def test_the_float32_margin_is_measured_only_when_the_difference_needs_it():
    from easc.ir import run

    manager = _finished_chain()
    asked = []
    manager.finish(None, run, lambda: asked.append(1) or {})  # float64 against float64: well within
    assert asked == [] and manager.float32_rounding is None


def test_a_difference_within_the_start_graphs_own_float32_rounding_passes_and_one_beyond_it_fails():
    from easc.ir import run

    manager = _finished_chain()
    start = dict(manager._start_outputs)
    scale = max(float(np.abs(v).max()) for v in start.values())
    shifted = {k: np.asarray(v, np.float64) + 1e-3 * (1 + scale) for k, v in start.items()}  # 100x the tolerance

    def rounded(by):  # the start graph's outputs "computed in float32", off the float64 ones by `by`
        return lambda: {k: np.asarray(v, np.float64) + by for k, v in start.items()}

    with pytest.raises(FunctionNotPreservedError, match=r"end to end: .* > allowed [0-9.e-]+$"):
        manager.finish(shifted, run)  # no margin without the float32 outputs
    diff, _ = manager.finish(shifted, run, rounded(0.3e-3 * (1 + scale)))  # 4 x 0.3e-3 covers 1e-3
    assert diff == pytest.approx(1e-3 * (1 + scale), rel=1e-3)
    assert manager.float32_rounding == pytest.approx(0.3e-3 * (1 + scale), rel=1e-6)
    with pytest.raises(FunctionNotPreservedError, match=r"> allowed [0-9.e-]+ \(of which 4 x [0-9.e-]+ for float32 "
                                                        r"rounding\)"):
        manager.finish(shifted, run, rounded(0.2e-3 * (1 + scale)))  # 4 x 0.2e-3 does not


def test_float32_outputs_are_the_interpreter_run_in_float32():
    from easc.ir import probe_inputs, run_all
    from easc.passes.base import float32_outputs

    graph = net()
    feeds = probe_inputs(graph, 3, 0)
    got = float32_outputs(graph, feeds)
    every = run_all(graph, feeds, dtype=np.float32)
    for public, name in graph.outputs.items():
        assert got[public].dtype == np.float32
        np.testing.assert_array_equal(got[public], every[name])
