"""Tests of the search loop (easc.search.loop) and its executors: what a run records, and that it survives.

Every search here is tiny (digits, 2 children of 1 Net2Wider + 1 Net2Deeper action, 1 epoch), so a run
takes seconds on CPU; the properties checked do not depend on size. The process-pool and Ray tests pay
for starting worker processes (torch imports), about 10-30 s each on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import threading

import pytest

import easc.backends.torch.train as train_mod
from easc.ir import graph_to_bytes, load_graph, structural_hash
from easc.search.config import ConfigError, SearchConfig
from easc.search.controller import reward_from_accuracy
from easc.search.executors import ExecutorError, ProcessExecutor
from easc.search.loop import Search, SearchError
from easc.search.runs import report_data
from easc.search.start_nets import digits_small
from easc.search.worker import ChildJob

import searches
from searches import children_of, resume_search, steps_of

# Small enough for seconds per run, big enough that children differ and actually train.
FAST = dict(dataset="digits", children=2, epochs=1, start_epochs=1, wider_actions=1, deeper_actions=1,
            threads=1, quiet=True)
DIVERGING_LR = 1e6  # SGD at this rate overflows the loss to inf/NaN within the first steps


def run_search(out, **options):
    return searches.run_search(out, **{**FAST, **options})


def decisions(run_dir):
    """What a search decided and measured, child by child, in order (ids and timestamps left out)."""
    return [(c.step, c.parent_id, c.hash, c.actions, c.status, c.val_acc, c.reward) for c in children_of(run_dir)]


def step_figures(run_dir):
    return [(s.step, s.mean_val_acc, s.best_val_acc, s.mean_reward, s.baseline, s.n_children)
            for s in steps_of(run_dir)]


class CountingTrainer:
    """Wraps `train_module`: counts calls, and makes the calls numbered in `diverge` (1 = the start net) train
    at a learning rate that turns the loss into NaN, so those children fail the way a real child would."""

    def __init__(self, diverge=()):
        self.real = train_mod.train_module
        self.diverge = set(diverge)
        self.calls = 0

    def __call__(self, module, data, config, **kwargs):
        self.calls += 1
        if self.calls in self.diverge:
            config = dataclasses.replace(config, lr=DIVERGING_LR)
        return self.real(module, data, config, **kwargs)


@pytest.fixture
def trainer(monkeypatch):
    """Install a CountingTrainer in place of train_module (the local executor trains in this process)."""

    def install(diverge=()):
        counting = CountingTrainer(diverge)
        monkeypatch.setattr(train_mod, "train_module", counting)
        return counting

    return install


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A two-step search with the local executor: what other executors and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("search") / "local"
    run_search(out, steps=2)
    return out


# -------------------------------------------------------------------------------------------- resume

def test_a_search_resumed_after_step_one_takes_the_same_decisions_as_one_run_straight_through(tmp_path,
                                                                                            reference_run):
    run_search(tmp_path / "interrupted", steps=1)
    assert [s.step for s in steps_of(tmp_path / "interrupted")] == [1]

    summary = resume_search(tmp_path / "interrupted", steps=2)

    # Step 2's decisions come from the policy restored from the store after step 1, and its children's
    # training seeds from (seed, step, index): on CPU the two runs agree to the last bit.
    assert summary.steps_done == 2
    assert decisions(tmp_path / "interrupted") == decisions(reference_run)
    assert step_figures(tmp_path / "interrupted") == step_figures(reference_run)


def test_resuming_a_finished_search_with_the_same_steps_trains_nothing_more(reference_run, trainer):
    before = decisions(reference_run)
    counting = trainer()

    summary = resume_search(reference_run)

    assert counting.calls == 0
    assert summary.steps_done == 2
    assert decisions(reference_run) == before


def test_resuming_with_a_changed_search_option_is_refused_and_leaves_the_run_untouched(reference_run):
    before = decisions(reference_run)
    with pytest.raises(ConfigError, match=r"--children 5: cannot change when resuming .*recorded: 2"):
        Search.resume(reference_run, {"children": 5})
    assert decisions(reference_run) == before


def test_the_report_names_the_trained_start_net_after_a_crash_while_training_it(tmp_path):
    out = tmp_path / "run"
    search = Search.start(SearchConfig(**FAST, steps=1), out)
    # What a driver killed during step 0 leaves behind: a start row that never finished.
    g = search.start_graph
    lost = search.store.add_child(step=0, parent_id=None, actions=[], hash=structural_hash(g), widths=[],
                                  depth=g.depth, params=g.params)
    search.store.start_child(lost)
    search.close()

    summary = resume_search(out)

    assert [c.status for c in children_of(out) if c.step == 0] == ["lost", "done"]
    assert report_data(out)["start"]["val_acc"] == summary.start_val_acc is not None


# -------------------------------------------------------------------------------------------- failures

def test_a_child_whose_training_diverges_is_stored_failed_with_reward_zero_and_the_search_goes_on(tmp_path, trainer):
    trainer(diverge={2, 3})  # every child of step 1; the start net (call 1) and step 2 train normally

    summary = run_search(tmp_path / "run", steps=2)

    children = children_of(tmp_path / "run")
    step1 = [c for c in children if c.step == 1]
    assert step1 and all(c.status == "failed" for c in step1)
    for c in step1:
        assert c.reward == 0.0 and c.val_acc is None and c.weights_path is None
        assert c.error.startswith(("TrainingDivergedError: training diverged", "same architecture as child"))
    assert summary.failed == len(step1)
    assert summary.steps_done == 2  # the search went on

    steps = {s.step: s for s in steps_of(tmp_path / "run")}
    assert steps[1].mean_val_acc is None and steps[1].mean_reward == 0.0
    # Step 2 grows the best network there is, the start net, since no child of step 1 trained.
    step2 = [c for c in children if c.step == 2]
    assert {c.parent_id for c in step2} == {children[0].id}
    assert all(c.status == "done" for c in step2)
    assert steps[2].mean_reward == pytest.approx(sum(reward_from_accuracy(c.val_acc) for c in step2) / len(step2))


def test_failed_children_count_as_reward_zero_in_the_step_mean(tmp_path, trainer):
    trainer(diverge={2})  # the first child of step 1 only

    run_search(tmp_path / "run", steps=1)

    step1 = [c for c in children_of(tmp_path / "run") if c.step == 1]
    assert [c.status for c in step1] == ["failed", "done"]
    (step,) = steps_of(tmp_path / "run")
    assert step.mean_reward == pytest.approx(reward_from_accuracy(step1[1].val_acc) / 2)
    assert step.mean_val_acc == step.best_val_acc == step1[1].val_acc


def test_a_start_net_that_cannot_train_stops_the_search_with_one_line_naming_it(tmp_path, trainer):
    trainer(diverge={1})
    with pytest.raises(SearchError, match=r"^the start network failed to train: TrainingDivergedError") as info:
        run_search(tmp_path / "run", steps=1)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------------------- cache

def test_children_equal_to_their_parent_are_cached_and_never_trained_again(tmp_path, trainer):
    counting = trainer()

    run_search(tmp_path / "run", steps=2, children=3, wider_actions=0, deeper_actions=0)

    start, *rest = children_of(tmp_path / "run")
    assert counting.calls == 1  # the start net only
    assert len(rest) == 6
    for c in rest:
        assert (c.status, c.hash, c.val_acc, c.train_seconds) == ("cached", start.hash, start.val_acc, 0.0)
        assert c.weights_path == start.weights_path
    assert [s.mean_val_acc for s in steps_of(tmp_path / "run")] == [start.val_acc, start.val_acc]


def test_children_of_one_step_with_the_same_architecture_are_trained_once(tmp_path, trainer):
    counting = trainer()

    # One Net2Deeper action, one kernel: digits-small has only a few places to deepen, so 5 children repeat.
    run_search(tmp_path / "run", steps=1, children=5, wider_actions=0, deeper_actions=1, kernels=[3])

    start, *step1 = children_of(tmp_path / "run")
    hashes = [c.hash for c in step1]
    assert len(set(hashes)) < len(hashes), "no repeated architecture: the test would not test the cache"
    done = {c.hash: c for c in step1 if c.status == "done"}
    assert counting.calls == 1 + len(done)
    assert len(done) == len(set(hashes) - {start.hash})
    for c in step1:
        assert c.status in ("done", "cached")
        twin = done.get(c.hash, start)
        assert (c.val_acc, c.weights_path) == (twin.val_acc, twin.weights_path)


# -------------------------------------------------------------------------------------------- executors

def _same_run(run_dir, reference):
    assert decisions(run_dir) == decisions(reference)
    assert step_figures(run_dir) == step_figures(reference)
    for c in children_of(run_dir):
        if c.status == "done":
            load_graph(run_dir / c.weights_path)


def test_a_process_pool_of_two_workers_gives_the_same_run_as_the_local_executor(tmp_path, reference_run):
    summary = run_search(tmp_path / "pool", steps=2, workers=2)
    assert summary.failed == 0
    _same_run(tmp_path / "pool", reference_run)


def test_a_ray_executor_with_two_local_workers_gives_the_same_run_as_the_local_executor(tmp_path, reference_run):
    ray = pytest.importorskip("ray")
    try:
        summary = run_search(tmp_path / "ray", steps=2, executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert summary.failed == 0
    _same_run(tmp_path / "ray", reference_run)


def test_an_executor_that_cannot_run_fails_before_the_run_folder_is_created(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ExecutorError, match=r"--executor ray needs Ray: pip install 'easc\[ray\]'"):
        Search.start(SearchConfig(**FAST, steps=1, executor="ray"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _job(child_id, epochs):
    return ChildJob(child_id, graph_to_bytes(digits_small()), {"name": "digits", "data_dir": None, "seed": 0},
                    {"epochs": epochs, "batch_size": 64, "lr": 0.02, "weight_decay": 1e-4, "seed": child_id})


def test_a_process_pool_whose_worker_is_killed_fails_that_child_and_trains_the_next_in_a_new_worker():
    executor = ProcessExecutor(["cpu"], threads=1)
    try:
        # The pool starts its worker at the first submit; the job (hundreds of epochs) is still running, or the
        # worker still starting, when the timer kills it a second later, on any machine.
        killer = threading.Timer(1.0, lambda: [os.kill(p.pid, signal.SIGKILL) for p in mp.active_children()])
        killer.start()
        (killed,) = executor.run([_job(1, 500)])
        killer.join()
        assert killed.status == "failed" and killed.error.startswith("worker died: BrokenProcessPool")

        (after,) = executor.run([_job(2, 1)])
        assert after.status == "done", after.error
    finally:
        executor.close()
