"""Exact resume: a search killed at any moment and resumed equals one never stopped, child for child.

The kills are deterministic: `EASC_KILL_AT=POINT@STEP` makes the search process SIGKILL itself at a named
moment (`easc.search.killpoints`), so each test hits the moment it names, not one chosen by timing. The search
is tiny (digits, 3 children of 1 Net2Wider + 1 Net2Deeper action, 1 epoch) in two stages (`--stages 6,3`: two
steps, then one step from the best network so far), so every kind of moment occurs in a few seconds. Children
are compared as (step, parent, actions, hash, val_acc) together with their slot, stage and status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from easc.cli.main import main
from easc.search.loop import Search
from easc.search.store import ExperimentStore

import searches

OPTIONS = dict(dataset="digits", children=3, epochs=1, start_epochs=1, stage_epochs=1, wider_actions=1,
               deeper_actions=1, stages=[6, 3], threads=1, quiet=True)
FLAGS = ["--dataset", "digits", "--children", "3", "--epochs", "1", "--stage-epochs", "1", "--wider-actions", "1",
         "--deeper-actions", "1", "--stages", "6,3", "--threads", "1", "--quiet"]
KILL_TIMEOUT = 600  # generous: the machine may be shared and slow to import torch


def run_search(out, **options):
    return searches.run_search(out, **{**OPTIONS, **options})


def children(run_dir):
    with ExperimentStore.open_existing(run_dir) as store:
        return [(c.step, c.parent_id, c.actions, c.hash, c.val_acc, c.stage, c.role, c.idx, c.status)
                for c in store.children()]


def steps(run_dir):
    with ExperimentStore.open_existing(run_dir) as store:
        return [(s.step, s.stage, s.mean_val_acc, s.best_val_acc, s.mean_reward, s.baseline, s.n_children)
                for s in store.steps()]


def report(run_dir):
    result = CliRunner().invoke(main, ["report", str(run_dir), "--json", "--no-plots"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per parent mode: what every killed-and-resumed run must reproduce."""
    runs = {}
    for parent in ("best", "start"):
        out = tmp_path_factory.mktemp("reference") / parent
        run_search(out, parent=parent)
        runs[parent] = out
    return runs


def kill_and_resume(out, point, parent):
    """Run `easc search` in a process that kills itself at `point`; then resume it here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EASC_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-m", "easc.cli.main", "search", *FLAGS, "--parent", parent,
                           "--out", str(out)], env=env, capture_output=True, timeout=KILL_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    killed_at = children(out)
    search = Search.resume(out)
    try:
        search.run()
    finally:
        search.close()
    return killed_at


@pytest.mark.parametrize("point, parent", [
    ("sampling@2", "best"),            # during sampling: some children of step 2 submitted, none trained
    ("child_done@2", "best"),          # the first child of step 2 finished and is stored
    ("child_done@2", "start"),
    ("controller_update@2", "best"),   # every child of step 2 done, the policy updated in memory only
    ("between_steps@1", "best"),       # step 1 committed, step 2 not begun
    ("stage_start@3", "best"),         # stage boundary: stage 2's start net recorded, not trained
    ("stage_started@3", "best"),       # stage boundary: stage 2's start net trained, no child sampled
])
def test_a_search_killed_at_any_moment_and_resumed_equals_one_never_stopped(tmp_path, reference, point, parent):
    out = tmp_path / "killed"
    killed_at = kill_and_resume(out, point, parent)

    assert killed_at != children(reference[parent])  # the kill did interrupt the run
    assert children(out) == children(reference[parent])
    assert steps(out) == steps(reference[parent])
    got, want = report(out), report(reference[parent])
    assert got["children"] == want["children"] == 1 + 2 * 3 + 1 + 3  # start, 2 steps, stage 2 start, 1 step
    assert got["stages"] == want["stages"]


def test_a_kill_after_a_better_child_finished_does_not_change_the_resumed_steps_parent(tmp_path, reference):
    # The bug this protects against: a child of the unfinished step that finished before the kill with a
    # better accuracy than every completed step's was taken as the parent (or stage start) of the rerun.
    out = tmp_path / "killed"
    killed_at = kill_and_resume(out, "controller_update@2", "best")
    step2 = [c for c in killed_at if c[0] == 2 and c[6] == "child"]
    assert all(c[8] in ("done", "cached") for c in step2)
    with ExperimentStore.open_existing(reference["best"]) as store:
        step1_best = store.best_before(2)
        parents = {c.parent_id for c in store.children(step=2)}
    assert parents == {step1_best.id}
    assert {c[1] for c in children(out) if c[0] == 2} == parents


def test_children_lost_in_flight_are_trained_again_in_their_own_rows_and_not_counted(tmp_path, reference):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EASC_KILL_AT": "sampling@2"}
    proc = subprocess.run([sys.executable, "-m", "easc.cli.main", "search", *FLAGS, "--parent", "start",
                           "--out", str(out)], env=env, capture_output=True, timeout=KILL_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    search = Search.resume(out)  # marks the pending child of step 2 lost
    try:
        with ExperimentStore.open_existing(out) as store:
            lost = store.children(status="lost")
        assert [(c.step, c.idx) for c in lost] == [(2, 0)]
        assert report(out)["children"] == 1 + 3  # the lost child is not counted
        search.run()
    finally:
        search.close()
    with ExperimentStore.open_existing(out) as store:
        assert store.children(status="lost") == []
        assert store.child(lost[0].id).status in ("done", "cached")
    assert children(out) == children(reference["start"])
