"""Tests of the layer tokens and the meta-controller (easc.search.tokens, easc.search.controller).

The learning test at the end is the one that matters: on a synthetic reward that is a known function of the
architecture, the REINFORCE policy must improve over its own start and beat random search at equal samples.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easc.search.controller import (
    ControllerError,
    DeeperDecision,
    Episode,
    RandomPolicy,
    ReinforcePolicy,
    Vocabulary,
    WiderDecision,
    make_policy,
    reward_from_accuracy,
    simulate_episode,
    update_baseline,
)
from easc.search.synthetic import synthetic_accuracy as _synthetic_accuracy
from easc.search.tokens import (
    LayerToken,
    SearchSpace,
    apply_deeper,
    apply_wider,
    blocks,
    deepen_points,
    next_width,
    token_string,
    widen_mask,
)

SPACE = SearchSpace.small()
POLICIES = [ReinforcePolicy, RandomPolicy]


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared with other test runs; the controller's tensors are tiny anyway.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def conv(name, width=8, kernel=3):
    return LayerToken("conv", width, kernel, name)


def fc(name, width=16, output=False):
    return LayerToken("fc", width, 0, name, is_output=output)


def pool(name):
    return LayerToken("pool", 0, 0, name)


def demo_net():
    """Like the released demo, smaller: three conv blocks, global pool, one hidden fc, the classifier."""
    return [conv("conv_1"), pool("pool_1"), conv("conv_2"), pool("pool_2"), conv("conv_3"), pool("gap"),
            fc("fc_1"), fc("fc_2", width=10, output=True)]


@st.composite
def networks(draw):
    """Random plain CNNs: 1-4 conv blocks of 1-3 layers, 0-2 hidden fc layers, a classifier.

    Widths come from the space (including its maximum) or fall outside it, so every mask case occurs.
    """
    conv_widths = st.sampled_from(SPACE.conv_widths + (5, 200))
    fc_widths = st.sampled_from(SPACE.fc_widths + (10, 1000))
    tokens = []
    for b in range(draw(st.integers(1, 4))):
        for i in range(draw(st.integers(1, 3))):
            tokens.append(conv(f"conv_{b}_{i}", draw(conv_widths), draw(st.sampled_from((1, 3, 5, 7)))))
        tokens.append(pool(f"pool_{b}"))
        if draw(st.booleans()):
            tokens.append(pool(f"pool_{b}_extra"))  # an empty block: must not become a choice
    if draw(st.booleans()):
        tokens.pop()  # no pool between the last conv and the fc stack: the fc stack is still its own block
    for i in range(draw(st.integers(0, 2))):
        tokens.append(fc(f"fc_{i}", draw(fc_widths)))
    tokens.append(fc("logits", draw(st.sampled_from((2, 10, 128))), output=True))
    return tokens


# ------------------------------------------------------------------------------------------------ tokens

def test_next_width_is_the_next_list_value_strictly_larger_and_none_at_the_max():
    assert next_width(conv("c", 8), SPACE) == 12
    assert next_width(conv("c", 10), SPACE) == 12  # off-list widths go to the next listed one
    assert next_width(conv("c", 64), SPACE) is None
    assert next_width(fc("f", 128), SPACE) is None
    assert next_width(fc("f", 8), SPACE) == 16
    assert next_width(pool("p"), SPACE) is None


def test_search_space_constructors_carry_the_papers_and_the_small_lists():
    paper = SearchSpace.paper()
    assert paper.conv_widths[0] == 16 and paper.conv_widths[-1] == 640 and len(paper.conv_widths) == 13
    assert paper.fc_widths[0] == 64 and paper.fc_widths[-1] == 1280 and len(paper.fc_widths) == 11
    assert paper.kernels == (1, 3, 5)
    assert SearchSpace.from_dict(SPACE.to_dict()) == SPACE


@pytest.mark.parametrize("kwargs, message", [
    (dict(conv_widths=(8, 4), fc_widths=(8,)), "conv_widths must be a non-empty, strictly increasing"),
    (dict(conv_widths=(4,), fc_widths=()), "fc_widths must be a non-empty"),
    (dict(conv_widths=(4,), fc_widths=(8,), kernels=(1, 2)), "kernels must be odd"),
])
def test_search_space_rejects_lists_next_width_cannot_walk(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


@pytest.mark.parametrize("args, message", [
    (("deconv", 4, 3, "x"), "kind 'deconv' is not one of"),
    (("pool", 4, 0, "x"), "a pool token has width 0"),
    (("conv", 0, 3, "x"), "needs a positive width"),
    (("conv", 4, 0, "x"), "needs a positive kernel size"),
    (("fc", 4, 3, "x"), "an fc layer has kernel 0"),
])
def test_layer_tokens_reject_impossible_layers(args, message):
    with pytest.raises(ValueError, match=message):
        LayerToken(*args)


def test_token_strings_read_like_the_paper():
    assert [token_string(t) for t in demo_net()] == [
        "conv-8-3", "pool", "conv-8-3", "pool", "conv-8-3", "pool", "fc-16", "fc-10"]


def test_blocks_split_at_pools_drop_empty_blocks_and_put_the_fc_stack_last_without_a_pool():
    tokens = [conv("a"), conv("b"), pool("p1"), pool("p2"), conv("c"), fc("f1"), fc("out", output=True)]
    assert blocks(tokens) == [[0, 1], [4], [5, 6]]
    assert blocks(demo_net()) == [[0], [2], [4], [6, 7]]
    with pytest.raises(ValueError, match="a conv layer after the fc stack has no block"):
        blocks([fc("f"), conv("c")])


def test_masks_leave_out_pools_the_output_and_max_width_layers():
    tokens = [conv("a", 64), pool("p"), conv("b", 8), fc("f", 128), fc("out", 10, output=True)]
    assert widen_mask(tokens, SPACE) == [False, False, True, False, False]
    assert deepen_points(tokens) == [[True], [True], [True, False]]


def test_apply_wider_moves_each_chosen_layer_to_its_next_width_only():
    widened = apply_wider(demo_net(), [True, False, False, False, True, False, True, False], SPACE)
    assert [t.width for t in widened] == [12, 0, 8, 0, 12, 0, 32, 10]
    assert [t.name for t in widened] == [t.name for t in demo_net()]


@pytest.mark.parametrize("index, message", [(1, "it is a pool"), (7, "it is the output layer")])
def test_apply_wider_refuses_a_layer_the_mask_leaves_out(index, message):
    mask = [i == index for i in range(len(demo_net()))]
    with pytest.raises(ValueError, match=message):
        apply_wider(demo_net(), mask, SPACE)


def test_apply_wider_refuses_a_layer_at_max_width_and_a_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="64 is the maximum width"):
        apply_wider([conv("a", 64)], [True], SPACE)
    with pytest.raises(ValueError, match="widen mask has 1 entries for 8 tokens"):
        apply_wider(demo_net(), [True], SPACE)


def test_apply_deeper_inserts_a_same_width_layer_after_the_chosen_one_with_a_traceable_name():
    once = apply_deeper(demo_net(), 1, 0, 5)
    assert once[3] == LayerToken("conv", 8, 5, "deepen_conv_2")
    twice = apply_deeper(once, 1, 0, 1)
    assert [t.name for t in twice[2:5]] == ["conv_2", "deepen_conv_2_2", "deepen_conv_2"]
    in_fc = apply_deeper(demo_net(), 3, 0, None)
    assert in_fc[7] == LayerToken("fc", 16, 0, "deepen_fc_1")
    assert in_fc[8].is_output


@pytest.mark.parametrize("block, layer, kernel, message", [
    (4, 0, 3, "block 4 does not exist"),
    (0, 1, 3, "block 0 has 1 layers, no layer 1"),
    (3, 1, None, "it is the output layer"),
    (0, 0, None, "a conv needs an odd kernel size"),
    (0, 0, 4, "a conv needs an odd kernel size"),
])
def test_apply_deeper_refuses_points_that_do_not_exist(block, layer, kernel, message):
    with pytest.raises(ValueError, match=message):
        apply_deeper(demo_net(), block, layer, kernel)


def test_vocabulary_maps_widths_outside_the_lists_to_per_kind_unknown_tokens():
    vocab = Vocabulary(SPACE)
    assert len(vocab) == 4 + len(SPACE.conv_widths) * len(SPACE.kernels) + len(SPACE.fc_widths)
    assert vocab.words[vocab.id(conv("a", 8, 3))] == "conv-8-3"
    assert vocab.words[vocab.id(conv("a", 5, 3))] == "conv-unk"
    assert vocab.words[vocab.id(conv("a", 8, 7))] == "conv-unk"  # kernel outside the space
    assert vocab.words[vocab.id(fc("f", 10))] == "fc-unk"
    assert vocab.words[vocab.id(pool("p"))] == "pool"


# --------------------------------------------------------------------------------------- masks, choices

@pytest.mark.parametrize("policy_cls", POLICIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=networks())
def test_sampled_actions_never_leave_the_masks(policy_cls, tokens):
    policy = policy_cls(SPACE, seed=len(tokens))
    allowed = widen_mask(tokens, SPACE)
    points = deepen_points(tokens)
    for _ in range(4):
        w = policy.sample_wider(tokens)
        assert len(w.widen) == len(tokens)
        assert not any(chosen and not ok for chosen, ok in zip(w.widen, allowed))
        apply_wider(tokens, w.widen, SPACE)  # the simulator agrees the action is valid
        d = policy.sample_deeper(tokens)
        assert 0 <= d.block < len(points) and 0 <= d.layer < len(points[d.block]), "a choice that does not exist"
        assert points[d.block][d.layer], "a new layer after the output layer"
        if d.kind == "fc":
            assert d.kernel is None
        else:
            assert d.kernel in SPACE.kernels
        apply_deeper(tokens, d.block, d.layer, d.kernel)


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_a_block_with_nothing_to_deepen_is_never_chosen(policy_cls):
    # The fc block holds only the classifier: the released code could pick it (unmasked block index).
    tokens = [conv("a"), pool("p1"), conv("b"), pool("gap"), fc("out", 10, output=True)]
    policy = policy_cls(SPACE, seed=3)
    chosen = Counter(policy.sample_deeper(tokens).block for _ in range(200))
    assert set(chosen) == {0, 1}


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_fc_blocks_get_no_kernel_and_the_kernel_adds_nothing_to_their_log_prob(policy_cls):
    # Only the fc block can be deepened, and it has one point: the deeper action is certain.
    tokens = [pool("p"), fc("f", 16), fc("out", 10, output=True)]
    d = policy_cls(SPACE, seed=0).sample_deeper(tokens)
    assert (d.block, d.layer, d.kernel, d.kind) == (0, 0, None, "fc")
    assert d.log_prob == pytest.approx(0.0, abs=1e-6) and d.entropy == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_a_network_with_no_widenable_layer_gets_an_empty_wider_action_of_probability_one(policy_cls):
    tokens = [conv("a", 64), pool("p"), fc("f", 128), fc("out", 10, output=True)]
    w = policy_cls(SPACE, seed=0).sample_wider(tokens)
    assert w.widen == (False,) * 4 and w.names == ()
    assert w.log_prob == pytest.approx(0.0, abs=1e-6) and w.entropy == pytest.approx(0.0, abs=1e-6)


def test_masked_wider_positions_add_nothing_to_log_prob_or_entropy():
    policy = ReinforcePolicy(SPACE, seed=5)
    tokens = [conv("a", 8), pool("p"), conv("b", 64), fc("f", 16), fc("out", 10, output=True)]
    w = policy.sample_wider(tokens)
    with torch.no_grad():
        enc, _ = policy._encode([tuple(tokens)])
        p = torch.sigmoid(policy.net.wider_head(enc[0]).squeeze(-1))
    expected_logp = expected_entropy = 0.0
    for i in (0, 3):  # the only widenable layers
        pi = float(p[i])
        expected_logp += math.log(pi if w.widen[i] else 1 - pi)
        expected_entropy -= pi * math.log(pi) + (1 - pi) * math.log(1 - pi)
    assert w.log_prob == pytest.approx(expected_logp, abs=1e-5)
    assert w.entropy == pytest.approx(expected_entropy, abs=1e-5)


def test_sampling_leaves_the_global_torch_rng_alone():
    before = torch.random.get_rng_state()
    policy = ReinforcePolicy(SPACE, seed=1)
    simulate_episode(policy, demo_net())
    assert torch.equal(before, torch.random.get_rng_state())


# ---------------------------------------------------------------------------------- log-prob, state

def test_recomputed_log_probs_equal_the_sampling_time_log_probs():
    policy = ReinforcePolicy(SPACE, seed=11)
    decisions = []
    for start in (demo_net(), demo_net()[:2] + demo_net()[5:], [conv("x", 5, 7)] + demo_net()):
        decisions += simulate_episode(policy, start)[0]  # token lists of many lengths in one batch
    logp, entropy = policy.evaluate(decisions)
    assert logp.requires_grad
    assert logp.tolist() == pytest.approx([d.log_prob for d in decisions], abs=1e-5)
    assert entropy.tolist() == pytest.approx([d.entropy for d in decisions], abs=1e-5)


@pytest.mark.parametrize("bad, message", [
    (WiderDecision(tuple(demo_net()), (False, True) + (False,) * 6, 0.0, 0.0), "widens a masked layer"),
    (DeeperDecision(tuple(demo_net()), 3, 1, None, 0.0, 0.0), "block 3, layer 1: not a deepening point"),
    (DeeperDecision(tuple(demo_net()), 5, 0, None, 0.0, 0.0), "block 5, layer 0: not a deepening point"),
    (DeeperDecision(tuple(demo_net()), 0, 0, 7, 0.0, 0.0), "kernel 7 is not one of"),
    (DeeperDecision(tuple(demo_net()), 3, 0, 3, 0.0, 0.0), "in an fc block carries kernel 3"),
    ("widen", "evaluate takes WiderDecision and DeeperDecision objects only"),
])
def test_evaluate_refuses_decisions_the_masks_forbid(bad, message):
    with pytest.raises(ControllerError, match=message):
        ReinforcePolicy(SPACE).evaluate([bad])


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_state_dict_round_trip_makes_the_same_subsequent_decisions(policy_cls):
    policy = policy_cls(SPACE, seed=21)
    policy.update([Episode.from_accuracy(simulate_episode(policy, demo_net())[0], acc) for acc in (0.4, 0.7)])
    state = policy.state_dict()
    expected = [simulate_episode(policy, demo_net())[0] for _ in range(3)]
    expected_stats = policy.update([Episode.from_accuracy(d, 0.6) for d in expected])

    resumed = policy_cls(SPACE, seed=999)  # different weights and generator until the state is loaded
    resumed.load_state_dict(state)
    got = [simulate_episode(resumed, demo_net())[0] for _ in range(3)]
    assert [[_choices(d) for d in ep] for ep in got] == [[_choices(d) for d in ep] for ep in expected]
    assert resumed.update([Episode.from_accuracy(d, 0.6) for d in got]) == pytest.approx(expected_stats)
    if policy_cls is ReinforcePolicy:  # the Adam moments came back too, so the next step lands on the same weights
        for a, b in zip(policy.net.parameters(), resumed.net.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def _choices(d):
    return d.widen if isinstance(d, WiderDecision) else (d.block, d.layer, d.kernel)


def test_a_state_dict_is_a_snapshot_that_later_training_does_not_change():
    policy = ReinforcePolicy(SPACE, seed=2)
    policy.update([Episode.from_accuracy(simulate_episode(policy, demo_net())[0], 0.5)])
    state = policy.state_dict()
    weights = {k: v.clone() for k, v in state["model"].items()}
    generator = state["generator"].clone()
    policy.update([Episode.from_accuracy(simulate_episode(policy, demo_net())[0], 0.9)])
    assert all(torch.equal(weights[k], v) for k, v in state["model"].items())
    assert torch.equal(generator, state["generator"])


def test_load_state_dict_refuses_another_policy_kind_or_search_space():
    state = ReinforcePolicy(SPACE).state_dict()
    with pytest.raises(ControllerError, match="state is for a 'reinforce' policy, not 'random'"):
        RandomPolicy(SPACE).load_state_dict(state)
    with pytest.raises(ControllerError, match="saved for search space"):
        ReinforcePolicy(SearchSpace.paper()).load_state_dict(state)
    with pytest.raises(ControllerError, match="controller state version 0, expected 1"):
        ReinforcePolicy(SPACE).load_state_dict({**state, "version": 0})


@pytest.mark.parametrize("call, message", [
    (lambda p: p.sample_wider([]), "the network has no layer tokens"),
    (lambda p: p.sample_deeper([pool("p"), fc("out", 10, output=True)]), "no layer can be deepened"),
    (lambda p: p.update([]), "update needs at least one episode"),
])
@pytest.mark.parametrize("policy_cls", POLICIES)
def test_policies_refuse_what_they_cannot_act_on(policy_cls, call, message):
    with pytest.raises(ControllerError, match=message):
        call(policy_cls(SPACE))


def test_an_update_with_a_forbidden_decision_leaves_the_policy_as_it_was():
    policy = ReinforcePolicy(SPACE, seed=6)
    bad = DeeperDecision(tuple(demo_net()), 3, 1, None, 0.0, 0.0)  # after the output layer
    with pytest.raises(ControllerError, match="not a deepening point"):
        policy.update([Episode((bad,), 1.0)])
    assert policy.baseline is None and policy.n_updates == 0


def test_make_policy_names_the_strategies():
    assert isinstance(make_policy("rl", SPACE), ReinforcePolicy)
    assert isinstance(make_policy("random", SPACE), RandomPolicy)
    with pytest.raises(ControllerError, match="unknown search strategy 'evolution'"):
        make_policy("evolution", SPACE)


# ------------------------------------------------------------------------------------ reward, baseline

def test_reward_is_tan_of_accuracy_times_half_pi_clipped_and_zero_for_a_failed_child():
    assert reward_from_accuracy(0.5) == pytest.approx(1.0)
    assert reward_from_accuracy(0.0) == 0.0
    assert reward_from_accuracy(0.8) == pytest.approx(math.tan(0.4 * math.pi))
    assert reward_from_accuracy(1.0) == pytest.approx(math.tan(0.999 * math.pi / 2))  # finite
    assert reward_from_accuracy(None) == 0.0
    assert reward_from_accuracy(float("nan")) == 0.0


def test_baseline_keeps_095_of_the_old_value_and_takes_005_of_the_batch_mean():
    assert update_baseline(None, 2.0) == 2.0  # the first batch initialises it
    assert update_baseline(2.0, 4.0) == pytest.approx(0.95 * 2.0 + 0.05 * 4.0)


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_the_advantage_uses_the_baseline_from_before_the_batch(policy_cls):
    policy = policy_cls(SPACE, seed=4)
    batch = lambda accs: [Episode.from_accuracy(simulate_episode(policy, demo_net())[0], a) for a in accs]
    first = policy.update(batch([0.5, 0.5]))
    assert first["baseline_used"] == first["baseline"] == pytest.approx(1.0)
    second = policy.update(batch([0.8, 0.9]))
    mean = (reward_from_accuracy(0.8) + reward_from_accuracy(0.9)) / 2
    assert second["mean_reward"] == pytest.approx(mean)
    assert second["baseline_used"] == pytest.approx(1.0)
    assert second["baseline"] == pytest.approx(0.95 * 1.0 + 0.05 * mean)


def test_an_update_without_decisions_only_moves_the_baseline():
    policy = ReinforcePolicy(SPACE, seed=3)
    before = [p.clone() for p in policy.net.parameters()]
    stats = policy.update([Episode((), reward_from_accuracy(0.5))])
    assert stats["loss"] == 0.0 and policy.baseline == pytest.approx(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.net.parameters()))


def test_the_loss_is_reinforce_with_advantage_r_minus_b_on_every_action_plus_the_entropy_bonus():
    policy = ReinforcePolicy(SPACE, seed=8)
    policy.update([Episode.from_accuracy(simulate_episode(policy, demo_net())[0], 0.3)])
    b = policy.baseline
    episodes = [Episode.from_accuracy(simulate_episode(policy, demo_net())[0], a) for a in (0.2, 0.6, 0.9)]
    with torch.no_grad():
        per_episode = [policy.evaluate(e.decisions) for e in episodes]
    expected = -sum((e.reward - b) * float(lp.sum()) for e, (lp, _) in zip(episodes, per_episode)) / 3
    expected -= 1e-5 * sum(float(ent.sum()) for _, ent in per_episode) / 3
    assert policy.update(episodes)["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------- random search

def test_random_policy_choices_are_uniform_over_the_valid_options():
    tokens = [conv("a"), conv("b"), pool("p1"), conv("c", 64), pool("gap"), fc("f"), fc("out", 10, output=True)]
    policy = RandomPolicy(SPACE, seed=0)
    n = 3000
    deeper = [policy.sample_deeper(tokens) for _ in range(n)]
    # Three blocks, each uniform: 1/3. Block 0 has two layers: 1/6 each. Kernels of conv layers: 1/3 each.
    picks = Counter((d.block, d.layer) for d in deeper)
    expected = {(0, 0): 1 / 6, (0, 1): 1 / 6, (1, 0): 1 / 3, (2, 0): 1 / 3}
    assert set(picks) == set(expected)
    for choice, p in expected.items():
        assert abs(picks[choice] / n - p) < 4 * math.sqrt(p * (1 - p) / n), choice  # 4 sigma
    kernels = Counter(d.kernel for d in deeper if d.kind == "conv")
    total = sum(kernels.values())
    assert all(abs(kernels[k] / total - 1 / 3) < 4 * math.sqrt(2 / 9 / total) for k in SPACE.kernels)

    widened = Counter(name for _ in range(n // 3) for name in policy.sample_wider(tokens).names)
    assert set(widened) == {"a", "b", "f"}  # "c" is at max width; pools and the output never
    assert all(abs(widened[k] / (n // 3) - 0.5) < 4 * math.sqrt(0.25 / (n // 3)) for k in widened)


def test_random_policy_log_probs_are_those_of_its_uniform_choices():
    policy = RandomPolicy(SPACE, seed=1)
    w = policy.sample_wider(demo_net())  # four widenable layers, each a fair coin
    assert w.log_prob == pytest.approx(-4 * math.log(2))
    d = policy.sample_deeper(demo_net())  # four blocks, one point each, three kernels for a conv
    assert d.log_prob == pytest.approx(-math.log(4) - (math.log(3) if d.kind == "conv" else 0.0))


# --------------------------------------------------------------------------------------------- learning

STEPS = 30
NETWORKS_PER_STEP = 10


def synthetic_accuracy(tokens) -> float:
    return _synthetic_accuracy(tokens, SPACE)


def run_search(policy, steps=STEPS, networks_per_step=NETWORKS_PER_STEP) -> list[float]:
    """Mean reward per controller step on the synthetic task."""
    curve = []
    for _ in range(steps):
        episodes = []
        for _ in range(networks_per_step):
            decisions, child = simulate_episode(policy, demo_net())
            episodes.append(Episode.from_accuracy(decisions, synthetic_accuracy(child)))
        curve.append(policy.update(episodes)["mean_reward"])
    return curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_learns_the_synthetic_reward_and_beats_random_search_at_equal_samples(seed):
    rl = run_search(ReinforcePolicy(SPACE, seed=seed))
    random = run_search(RandomPolicy(SPACE, seed=seed))
    first, last = statistics.mean(rl[:5]), statistics.mean(rl[-5:])
    print(f"seed {seed}: RL mean reward steps 1-5 {first:.2f}, steps {STEPS - 4}-{STEPS} {last:.2f}, "
          f"all {statistics.mean(rl):.2f}; random {statistics.mean(random[:5]):.2f}, "
          f"{statistics.mean(random[-5:]):.2f}, all {statistics.mean(random):.2f}")
    # Both start at random-search level (p = 1/2 wideners, near-uniform softmaxes), so the RL curve must rise
    # well above where it started, and its mean over the same number of sampled networks must beat random's.
    assert last > 1.5 * first
    assert statistics.mean(rl) > 1.25 * statistics.mean(random)
