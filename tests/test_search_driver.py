"""The search driver: each child goes to the executor as soon as it is sampled, one controller update per
step, one probe set per parent, and the process pool hands the costliest waiting child to a free worker."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from easc.passes import apply_pass
from easc.search import calibration
from easc.search.config import SearchConfig
from easc.search.cost import multiply_adds, training_cost
from easc.search.executors import ProcessExecutor
from easc.search.loop import Search
from easc.search.start_nets import build_start_net
from easc.search.worker import ChildJob

FAST = dict(dataset="digits", children=3, epochs=1, start_epochs=1, wider_actions=1, deeper_actions=1,
            threads=1, quiet=True, steps=2)


def test_each_child_is_submitted_as_soon_as_it_is_sampled_and_the_policy_updates_once_per_step(tmp_path):
    search = Search.start(SearchConfig(**FAST), tmp_path / "run")
    log, probe_sets = [], []
    sample, submit, update = search._sample_child, search.executor.submit, search.policy.update

    def spy_sample(parent, probes, step, index):
        log.append(("sample", step, index))
        probe_sets.append((step, id(probes)))
        return sample(parent, probes, step, index)

    def spy_submit(job, on_epoch=None):
        log.append(("submit", job.child_id))
        return submit(job, on_epoch)

    def spy_update(episodes):
        log.append(("update", len(episodes)))
        return update(episodes)

    search._sample_child, search.executor.submit, search.policy.update = spy_sample, spy_submit, spy_update
    try:
        search.run()
    finally:
        search.close()
    kinds = [entry[0] for entry in log]
    # The start net, then per step: sample, submit, sample, submit, ..., one update.
    assert kinds == ["submit"] + (["sample", "submit"] * 3 + ["update"]) * 2, log
    assert [entry[1] for entry in log if entry[0] == "update"] == [3, 3]
    # --parent start: every child of the run comes from child 1, and all share its one probe set.
    assert len({probes for _, probes in probe_sets}) == 1


def _job(child_id, cost):
    return ChildJob(child_id, b"x", {"name": "digits"}, {}, cost=cost)


def test_the_process_pool_hands_the_costliest_waiting_child_to_the_next_free_worker():
    pool = ProcessExecutor.__new__(ProcessExecutor)  # the scheduling only: no worker processes
    pool.devices, pool.futures, pool.backlog = ["cpu", "cpu"], {}, []
    handed = []
    pool._submit_to_pool = lambda job: handed.append(job.child_id) or object()

    for child_id, cost in enumerate([10, 20, 5, 50, 30, 40, 50]):
        pool.submit(_job(child_id, cost))

    # One child per worker: the first two as they come (nothing else is waiting yet); the rest wait, so
    # that a freed worker takes the costliest of all sampled by then (ties: the earlier child).
    assert handed == [0, 1]
    assert pool.in_flight == 7
    pool.futures.popitem()
    pool._dispatch()
    assert handed == [0, 1, 3]
    pool.futures.clear()
    pool._dispatch()
    assert handed == [0, 1, 3, 6, 5]


def test_the_training_cost_follows_multiply_adds_and_epochs():
    net = build_start_net("digits-small", (1, 8, 8), 10, 0)
    conv = next(n for n in net.layers() if n.op == "conv2d")
    wider = apply_pass(net, "widen", layer=conv.name, width=2 * conv.width, rng=np.random.default_rng(0)).graph
    # Doubling the first conv's filters doubles its multiply-adds and the next conv's.
    assert multiply_adds(wider) > multiply_adds(net)
    assert training_cost(wider, 6) > training_cost(net, 6)
    assert training_cost(net, 6) == 2 * training_cost(net, 3)


def test_the_calibration_statistics_are_measured_once_per_parent_not_once_per_child(tmp_path, monkeypatch):
    measured = []
    measure = calibration.measure
    monkeypatch.setattr(calibration, "measure", lambda graph, images: measured.append(graph) or measure(graph, images))
    search = Search.start(SearchConfig(**{**FAST, "wider_actions": 2, "deeper_actions": 2}), tmp_path / "run")
    try:
        search.run()
    finally:
        search.close()
    # --parent start: 2 steps x 3 children of one parent, whose first deepen follows two widens.
    assert len(measured) == 1 and measured[0] is search._parent_graph[1]


def test_a_workers_warm_up_takes_an_optimiser_step_without_touching_its_random_generators():
    # A fresh interpreter, as a spawned worker is: the first optimiser imports torch._dynamo (a second), which
    # the warm-up pays instead of the worker's first child; the global generator is the one it started with.
    code = ("import sys, torch; torch.manual_seed(5); state = torch.get_rng_state()\n"
            "from easc.search.executors import _warm_up; _warm_up(None)\n"
            "assert 'torch._dynamo' in sys.modules\n"
            "assert torch.equal(state, torch.get_rng_state())\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
