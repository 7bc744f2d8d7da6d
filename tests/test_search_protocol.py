"""The paper's search protocol: parents, stages, depth and size limits, the DenseNet stem and transitions,
training without augmentation. Searches are tiny (digits, 3 children, 1 epoch) and run in-process."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from easc.cli.main import main
from easc.ir import load_graph, probe_inputs, verify
from easc.passes.base import PRESERVATION_RTOL, max_output_difference
from easc.passes.dense import dense_layers
from easc.search import worker
from easc.search.config import SearchConfig
from easc.search.controller import RandomPolicy, ReinforcePolicy
from easc.search.densenet_space import DenseNetSpace
from easc.search.densenet_start import densenet_digits
from easc.search.encode import graph_tokens
from easc.search.loop import Search
from easc.search.store import ExperimentStore
from easc.search.tokens import LayerToken, SearchSpace, blocks, deepen_points
import searches
from searches import children_of
from strategies import randomise_weights

FAST = dict(dataset="digits", children=3, epochs=1, start_epochs=1, wider_actions=1, deeper_actions=2,
            threads=1, quiet=True)


def run_search(out, **options):
    return searches.run_search(out, **{**FAST, **options})


# -- parents and stages ---------------------------------------------------------------------------
def test_with_parent_start_every_child_of_a_stage_comes_from_that_stages_start_net(tmp_path):
    run_search(tmp_path / "run", parent="start", stages=[6, 3], stage_epochs=2)
    rows = children_of(tmp_path / "run")
    start1, start2 = [c for c in rows if c.role == "start"]
    stage1 = [c for c in rows if c.role == "child" and c.stage == 1]
    stage2 = [c for c in rows if c.role == "child" and c.stage == 2]

    assert (start1.step, start1.stage, start1.parent_id) == (0, 1, None)
    assert [c.step for c in stage1] == [1, 1, 1, 2, 2, 2] and {c.parent_id for c in stage1} == {start1.id}
    # At the boundary the best network of stage 1 (completed steps only) starts stage 2, trained further.
    best = max((c for c in rows if c.step < 3 and c.val_acc is not None), key=lambda c: (c.val_acc, -c.id))
    assert (start2.step, start2.stage, start2.parent_id, start2.hash) == (3, 2, best.id, best.hash)
    assert start2.val_acc is not None and start2.weights_path != best.weights_path
    assert [c.step for c in stage2] == [3, 3, 3] and {c.parent_id for c in stage2} == {start2.id}

    result = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--no-plots"], catch_exceptions=False)
    assert "parent: start" in result.output
    assert f"stage 2: from step 3, 1 step(s) done; start net child {start2.id} = child {best.id}" in result.output


def test_with_parent_best_each_step_grows_the_best_network_of_the_steps_before_it(tmp_path):
    run_search(tmp_path / "run", parent="best", steps=3)
    rows = children_of(tmp_path / "run")
    for step in (2, 3):
        earlier = [c for c in rows if c.step < step and c.val_acc is not None]
        best = max(earlier, key=lambda c: (c.val_acc, -c.id))
        assert {c.parent_id for c in rows if c.step == step} == {best.id}


# -- limits ---------------------------------------------------------------------------------------
def conv(name, width=8):
    return LayerToken("conv", width, 3, name)


TOKENS = [conv("a"), conv("b"), LayerToken("pool", 0, 0, "p"), conv("c"), LayerToken("pool", 0, 0, "g"),
          LayerToken("fc", 10, 0, "out", is_output=True)]
SMALL = SearchSpace.small()


def test_deepening_points_stop_at_the_layers_per_block_and_total_token_limits():
    limited = SearchSpace(SMALL.conv_widths, SMALL.fc_widths, max_layers_per_block=2)
    assert deepen_points(TOKENS, limited) == [[False, False], [True], [False]]
    total = SearchSpace(SMALL.conv_widths, SMALL.fc_widths, max_layers=len(TOKENS))
    assert deepen_points(TOKENS, total) == [[False, False], [False], [False]]


@pytest.mark.parametrize("policy_class", [ReinforcePolicy, RandomPolicy])
def test_the_controller_never_offers_a_deepening_beyond_the_limits(policy_class):
    space = SearchSpace(SMALL.conv_widths, SMALL.fc_widths, max_layers_per_block=3, max_layers=9)
    policy = policy_class(space, seed=0)
    for _ in range(20):
        tokens = list(TOKENS)
        for _ in range(6):
            if not any(any(b) for b in deepen_points(tokens, space)):
                break
            d = policy.sample_deeper(tokens)
            tokens = d.apply()
        assert all(len(b) <= 3 for b in blocks(tokens)) and len(tokens) <= 9


def test_a_token_marked_cannot_widen_or_deepen_is_never_offered():
    tokens = [conv("a"), LayerToken("conv", 8, 3, "b", can_widen=False, can_deepen=False),
              LayerToken("pool", 0, 0, "g"), LayerToken("fc", 10, 0, "out", is_output=True)]
    policy = RandomPolicy(SMALL, seed=1)
    for _ in range(30):
        assert "b" not in policy.sample_wider(tokens).names
        assert policy.sample_deeper(tokens).name == "a"


def test_a_hill_climb_under_tight_limits_keeps_every_child_within_them(tmp_path):
    run_search(tmp_path / "run", parent="best", steps=3, deeper_actions=3, max_layers_per_block=3, max_layers=8)
    for c in children_of(tmp_path / "run"):
        tokens = graph_tokens(load_graph(tmp_path / "run" / c.weights_path))
        assert all(len(b) <= 3 for b in blocks(tokens)) and len(tokens) <= 8, (c.id, tokens)


def test_no_child_exceeds_max_params(tmp_path):
    cap = 6000
    run_search(tmp_path / "run", parent="best", steps=2, wider_actions=2, max_params=cap)
    rows = children_of(tmp_path / "run")
    assert all(c.params <= cap for c in rows)
    assert any(c.params > 1770 for c in rows)  # the cap still lets the start net (1,770 parameters) grow


# -- DenseNet stem and transitions ----------------------------------------------------------------
def test_the_densenet_space_widens_stem_and_transitions_after_an_episode_and_keeps_the_function():
    space = DenseNetSpace.from_config(SearchConfig(space="densenet", widen_noise=0.0), (1, 8, 8))
    graph = randomise_weights(densenet_digits(), np.random.default_rng(1))
    probes = probe_inputs(graph, 2)
    policy = RandomPolicy(space.space, seed=0)
    child, rng = graph, np.random.default_rng(0)
    for _ in range(4):
        child, _ = space.apply_wider(child, policy.sample_wider(space.tokens(child)), rng, probes)
    records = []
    finished = space.finish_episode(child, rng, probes, records)

    verify(finished)
    dense = dense_layers(finished)
    mean = sum(layer.growth for layer in dense.values()) / len(dense)
    assert finished.node("stem").width >= round(2 * mean) > graph.node("stem").width
    conv = finished.node("transition1_conv")
    assert conv.width >= conv.weights["weight"].shape[1] // 2
    assert [r["layer"] for r in records if "skipped" not in r] == ["stem", "transition1_conv"]
    diff, scale = max_output_difference(graph, finished, probes)
    assert diff <= PRESERVATION_RTOL * (1 + scale)

    space.widen_transitions = False
    assert space.finish_episode(child, rng, probes, []) is child


# -- augmentation ---------------------------------------------------------------------------------
def test_no_augment_turns_the_data_sets_augmentation_off_for_every_child(monkeypatch):
    from easc.backends.torch import data as data_mod

    real = data_mod.load_dataset

    def augmented(name, data_dir=None, **kwargs):  # a data set that augments, as CIFAR-10 does
        kwargs.pop("download", None)
        return real("synthetic", seed=kwargs.get("seed", 0), augment="crop_flip", shape=(3, 8, 8), n=60)

    monkeypatch.setattr(data_mod, "load_dataset", augmented)
    worker._DATA_CACHE.clear()
    try:
        assert worker.dataset_for({"name": "fake", "seed": 0}).augment == "crop_flip"
        assert worker.dataset_for({"name": "fake", "seed": 0, "augment": False}).augment == "none"
    finally:
        worker._DATA_CACHE.clear()


def test_the_search_flag_no_augment_is_recorded_and_resume_keeps_it(tmp_path):
    result = CliRunner().invoke(main, ["search", "--dataset", "digits", "--steps", "1", "--children", "1",
                                       "--epochs", "1", "--wider-actions", "0", "--deeper-actions", "1",
                                       "--no-augment", "--quiet", "--out", str(tmp_path / "run")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with ExperimentStore.open_existing(tmp_path / "run") as store:
        assert store.config()["augment"] is False
    search = Search.resume(tmp_path / "run")
    try:
        assert search.data_spec["augment"] is False
    finally:
        search.close()
