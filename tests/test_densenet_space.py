"""The DenseNet search space (`search/densenet_space.py`): tokens, verified actions, the CLI end to end."""

from __future__ import annotations

import numpy as np
import pytest

from easc.ir import probe_inputs, verify
from easc.passes.base import PRESERVATION_RTOL, PassError, max_output_difference
from easc.passes.dense import dense_layers
from easc.search.config import SearchConfig
from easc.search.controller import RandomPolicy, ReinforcePolicy, WiderDecision
from easc.search.densenet_space import GROWTH_RATES, SMALL_GROWTH_RATES, DenseNetSpace
from easc.search.densenet_start import DENSENET_START_NETS, densenet_bc, densenet_digits
from easc.search.loop import default_start, make_space, resolve_defaults
from easc.search.start_nets import build_start_net, digits_small
from easc.search.tokens import blocks, token_string
from strategies import randomise_weights


def space(**config):
    config.setdefault("widen_noise", 0.0)  # exact widening, so the tests can check preservation tightly
    return DenseNetSpace.from_config(SearchConfig(space="densenet", **config), (1, 8, 8))


def digits():
    return randomise_weights(densenet_digits(), np.random.default_rng(1))


def _preserved(parent, child, probes):
    diff, scale = max_output_difference(parent, child, probes)
    assert diff <= PRESERVATION_RTOL * (1 + scale)


# -- configuration and tokens ---------------------------------------------------------------------
def test_the_space_takes_growth_rates_from_the_config_and_defaults_to_4_to_48_step_2():
    assert DenseNetSpace.from_config(SearchConfig(space="densenet"), (3, 32, 32)).space.conv_widths \
        == GROWTH_RATES == tuple(range(4, 49, 2))
    assert space().space.conv_widths == SMALL_GROWTH_RATES == tuple(range(4, 17, 2))  # 8x8 digits: capped
    assert space().space.kernels == (3,)
    assert space(growth_rates=[6, 8, 12]).space.conv_widths == (6, 8, 12)
    assert DenseNetSpace.default_wider_actions == 10
    config = resolve_defaults(SearchConfig(space="densenet"))
    assert (config.wider_actions, config.deeper_actions) == (10, 5)
    assert isinstance(make_space(config, (1, 8, 8)), DenseNetSpace)
    assert default_start(config, (1, 8, 8)) == "densenet-digits"
    assert default_start(config, (3, 32, 32)) == "densenet-bc"


def test_start_nets_are_built_by_name_for_the_data_shape():
    assert set(DENSENET_START_NETS) == {"densenet-bc", "densenet-digits"}
    graph = build_start_net("densenet-bc", (3, 32, 32), 100, seed=3)
    assert graph.node("classifier").width == 100 and graph.inputs[0].type.sample_shape == (3, 32, 32)
    assert build_start_net("densenet-digits", (1, 8, 8), 10).node("block2_layer3").width == 6


def test_tokens_of_the_digits_start_net_are_dense_layers_pools_and_the_classifier():
    tokens = space().tokens(densenet_digits())
    assert [token_string(t) for t in tokens] == ["conv-6-3"] * 3 + ["pool"] + ["conv-6-3"] * 3 + ["pool", "fc-10"]
    assert [t.name for t in tokens] == ["block1_layer1", "block1_layer2", "block1_layer3", "transition1_pool",
                                        "block2_layer1", "block2_layer2", "block2_layer3", "gap", "classifier"]
    assert tokens[-1].is_output
    assert blocks(tokens) == [[0, 1, 2], [4, 5, 6], [8]]


def test_tokens_of_the_cifar_start_net_make_three_blocks_and_the_head():
    tokens = DenseNetSpace.from_config(SearchConfig(), (3, 32, 32)).tokens(densenet_bc(growth=12, layers=(2, 3, 4)))
    assert [len(b) for b in blocks(tokens)] == [2, 3, 4, 1]
    assert {t.width for t in tokens if t.kind == "conv"} == {12}


def test_tokens_refuse_a_network_without_dense_blocks():
    with pytest.raises(PassError, match="the DenseNet space found no dense block in digits_small .*use --space plain"):
        space().tokens(digits_small())


# -- actions ------------------------------------------------------------------------------------
def test_wider_decisions_become_verified_dense_widens_to_the_next_growth():
    s, graph = space(), digits()
    probes = probe_inputs(graph, 2)
    policy = RandomPolicy(s.space, seed=0)
    child = graph
    for _ in range(3):
        decision = policy.sample_wider(s.tokens(child))
        before = {name: dense_layers(child)[name].growth for name in decision.names}
        child, records = s.apply_wider(child, decision, np.random.default_rng(0), probes)
        verify(child)
        assert [r["layer"] for r in records] == list(decision.names)
        for r in records:
            assert r["pass"] == "dense_widen" and r["growth"] == before[r["layer"]] + 2 and r["max_diff"] < 1e-5
    _preserved(graph, child, probes)
    assert [t.width for t in s.tokens(child) if t.kind == "conv"] != [6] * 6


def test_deeper_decisions_insert_calibrated_dense_layers_where_the_token_simulator_puts_them():
    s, graph = space(), digits()
    probes = probe_inputs(graph, 2)
    batch = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    policy = ReinforcePolicy(s.space, seed=1)
    child = graph
    for _ in range(3):
        decision = policy.sample_deeper(s.tokens(child))
        child, (record,) = s.apply_deeper(child, decision, np.random.default_rng(0), probes, batch)
        assert record["pass"] == "dense_deepen" and record["after"] == decision.name and record["calibrated"]
        simulated = [(t.kind, t.width) for t in decision.apply()]
        assert [(t.kind, t.width) for t in s.tokens(child)] == simulated
    _preserved(graph, child, probes)
    assert sum(t.kind == "conv" for t in s.tokens(child)) == 9


def test_refused_actions_are_recorded_as_skipped_and_the_graph_kept():
    from easc.ir import GraphBuilder
    from easc.search.densenet_start import dense_layer

    # a dense block whose output is the graph's output: neither its growth nor its length can change
    b = GraphBuilder("exposed", rng=np.random.default_rng(0))
    stem = b.conv2d(b.input("x", (1, 4, 4)), 4, 3, padding=1, name="stem")
    b.output("features", b.concat([stem, dense_layer(b, stem, "block1_layer1", 4)]))
    graph, s = b.build(), space()
    tokens = s.tokens(graph)
    probes = probe_inputs(graph, 2)
    same, records = s.apply_wider(graph, WiderDecision(tuple(tokens), (True,), 0.0, 0.0), None, probes)
    assert same is graph
    assert records == [{"pass": "dense_widen", "layer": "block1_layer1", "growth": 6,
                        "skipped": "widen block1_layer1: its channels reach the graph output 'features' (node "
                                   "concat_1); widening would change the output's shape"}]
    decision = RandomPolicy(s.space).sample_deeper(tokens)
    same, (record,) = s.apply_deeper(graph, decision, None, probes)
    assert same is graph and record["pass"] == "dense_deepen"
    assert "concat_1, is the graph output 'features'" in record["skipped"]


# -- the command line --------------------------------------------------------------------------
def _onnx_backend():
    from easc.backends.onnx import save_onnx

    return save_onnx


def test_easc_transform_widens_and_deepens_dense_layers_of_an_exported_densenet(tmp_path):
    from click.testing import CliRunner

    from easc.backends.formats import load_model
    from easc.cli.main import main

    save_onnx = _onnx_backend()
    source, out = tmp_path / "densenet.onnx", tmp_path / "out.onnx"
    save_onnx(digits(), source)
    result = CliRunner().invoke(main, ["transform", str(source), "--widen", "block1_layer3", "--deepen",
                                       "block2_layer2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "dense_widen layer=block1_layer3 growth=12 bottleneck=48: verified exact" in result.output
    assert "dense_deepen after=block2_layer2" in result.output
    graph = load_model(out)
    layers = dense_layers(graph)
    assert layers["block1_layer3"].growth == 12 and "deepen_block2_layer2" in layers


@pytest.mark.slow
def test_easc_search_runs_a_tiny_densenet_search_on_digits(tmp_path):
    from click.testing import CliRunner

    from easc.cli.main import main

    args = ["search", "--space", "densenet", "--dataset", "digits", "--steps", "1", "--children", "2", "--epochs",
            "1", "--wider-actions", "2", "--deeper-actions", "1", "--quiet", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert '"steps": 1' in result.output and '"failed": 0' in result.output
