"""Tests of the experiment store (easc.search.store): bookkeeping a search needs to resume after a crash."""

from __future__ import annotations

import re
import sqlite3

import pytest
import torch

from easc import __version__
from easc.search.controller import Episode, ReinforcePolicy, simulate_episode
from easc.search.store import SCHEMA_VERSION, STORE_FILE, ExperimentStore, StoreError
from easc.search.tokens import LayerToken, SearchSpace

SPACE = SearchSpace.small()
TOKENS = [LayerToken("conv", 8, 3, "conv_1"), LayerToken("pool", 0, 0, "gap"),
          LayerToken("fc", 10, 0, "fc_1", is_output=True)]


@pytest.fixture
def store(tmp_path):
    with ExperimentStore(tmp_path / "run") as s:
        yield s


def add(store, step=1, hash="h", parent_id=None, **kw):
    return store.add_child(step=step, parent_id=parent_id, actions=[{"op": "widen", "layers": ["conv_1"]}],
                           hash=hash, widths=[8, 10], depth=2, params=1234, **kw)


def record(store, step, state=None):
    store.record_step(step, mean_val_acc=0.5, best_val_acc=0.6, mean_reward=1.0, baseline=0.9, n_children=10,
                      controller_state=state if state is not None else {"step": torch.tensor(step)})


def test_a_new_run_folder_gets_a_wal_store_and_its_run_info(tmp_path):
    with ExperimentStore(tmp_path / "new" / "run") as s:
        assert (tmp_path / "new" / "run" / STORE_FILE).is_file()
        assert s.journal_mode() == "wal"
        info = s.run_info()
        assert info["easc_version"] == __version__ and info["schema_version"] == str(SCHEMA_VERSION) and "created" in info
        s.record_config({"steps": 30, "space": "small"}, strategy="rl")
        assert s.config() == {"steps": 30, "space": "small"} and s.run_info()["strategy"] == "rl"
        assert s.last_completed_step() is None and s.children() == [] and s.steps() == []


def test_children_round_trip_with_json_columns_lineage_and_step_order(store):
    start = add(store, step=0, hash="start", status="done", val_acc=0.5, reward=1.0, train_seconds=3.0)
    kids = [add(store, step=1, hash=f"k{i}", parent_id=start) for i in range(3)]
    assert kids == sorted(kids) and kids[0] > start
    child = store.child(kids[1])
    assert child.parent_id == start and child.step == 1 and child.status == "pending"
    assert child.actions == [{"op": "widen", "layers": ["conv_1"]}] and child.widths == [8, 10]
    assert (child.depth, child.params, child.val_acc, child.finished) == (2, 1234, None, None)
    assert store.child(start).finished is not None  # added already done
    assert [c.id for c in store.children(step=1)] == kids
    assert [c.id for c in store.children(status="done")] == [start]


def test_finishing_and_failing_a_child_record_results_and_the_finish_time(store):
    a, b = add(store, hash="a"), add(store, hash="b")
    store.start_child(a)
    assert store.child(a).status == "running" and store.child(a).finished is None
    store.finish_child(a, val_acc=0.71, reward=2.1, train_seconds=12.5, weights_path="children/a.safetensors")
    done = store.child(a)
    assert (done.status, done.val_acc, done.reward, done.train_seconds) == ("done", 0.71, 2.1, 12.5)
    assert done.weights_path == "children/a.safetensors" and done.finished is not None
    store.fail_child(b, "RuntimeError: CUDA out of memory", train_seconds=1.0)
    failed = store.child(b)
    assert (failed.status, failed.reward, failed.error) == ("failed", 0.0, "RuntimeError: CUDA out of memory")


def test_weights_paths_are_stored_relative_to_the_run_folder(store, tmp_path):
    a = add(store, hash="a")
    store.update_child(a, weights_path=store.run_dir.resolve() / "children" / "a.bin")
    assert store.child(a).weights_path == "children/a.bin"
    with pytest.raises(StoreError, match=r"weights path .*elsewhere.bin is outside the run folder"):
        store.update_child(a, weights_path=tmp_path / "elsewhere.bin")


def test_weights_paths_built_from_a_relative_run_folder_are_stored_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ExperimentStore("runs/demo") as s:
        a = add(s, hash="a", status="done", val_acc=0.5, reward=1.0,
                weights_path=str(s.run_dir / "children" / "a.easir"))
        assert s.child(a).weights_path == "children/a.easir"
        s.update_child(a, weights_path="children/b.easir")  # already relative to the run folder: kept
        assert s.child(a).weights_path == "children/b.easir"


def test_find_done_by_hash_returns_the_first_trained_child_and_nothing_untrained(store):
    add(store, hash="x", status="failed", error="boom", reward=0.0)
    add(store, hash="x", status="running")
    assert store.find_done_by_hash("x") is None
    first = add(store, hash="x", status="done", val_acc=0.6, reward=1.4)
    add(store, hash="x", status="cached", val_acc=0.6, reward=1.4)
    add(store, hash="x", status="done", val_acc=0.61, reward=1.4)
    assert store.find_done_by_hash("x").id == first
    assert store.find_done_by_hash("never-seen") is None


def test_leaderboard_ranks_trained_children_by_validation_accuracy(store):
    ids = {acc: add(store, hash=f"h{acc}", status="done", val_acc=acc, reward=1.0) for acc in (0.5, 0.9, 0.7)}
    add(store, hash="h0.9", status="cached", val_acc=0.9, reward=1.0)  # a repeat, not a second entry
    add(store, hash="fail", status="failed", error="x")
    assert [c.id for c in store.leaderboard(k=2)] == [ids[0.9], ids[0.7]]
    assert len(store.leaderboard()) == 3


def test_a_step_and_its_controller_state_are_written_in_one_transaction(store):
    record(store, 1)
    # Make the second insert of step 2 (its controller state) fail: the step row must not stay behind.
    raw = sqlite3.connect(store.path)
    raw.execute("INSERT INTO controller_state (step, blob) VALUES (2, x'00')")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="step 2 is already recorded"):
        record(store, 2)
    assert [s.step for s in store.steps()] == [1]
    assert store.last_completed_step() == 1


def test_a_controller_state_the_safe_loader_would_refuse_is_refused_when_saved(store):
    class Opaque:
        pass

    with pytest.raises(StoreError, match="the controller state of step 1 cannot be saved and loaded back safely"):
        record(store, 1, state={"thing": Opaque()})
    assert store.steps() == [] and store.last_completed_step() is None


def test_a_step_cannot_be_recorded_twice(store):
    record(store, 1)
    with pytest.raises(StoreError, match="step 1 is already recorded"):
        record(store, 1)


def test_a_policy_state_saved_with_a_step_resumes_the_same_decisions(store):
    policy = ReinforcePolicy(SPACE, seed=5)
    policy.update([Episode.from_accuracy(simulate_episode(policy, TOKENS)[0], 0.6)])
    record(store, 1, policy.state_dict())
    expected = simulate_episode(policy, TOKENS)[1]

    resumed = ReinforcePolicy(SPACE, seed=77)
    resumed.load_state_dict(store.load_controller_state())  # default: the last completed step
    assert simulate_episode(resumed, TOKENS)[1] == expected
    assert resumed.baseline == policy.baseline


def test_reopening_after_a_crash_resumes_from_the_last_step_and_marks_children_in_flight_lost(tmp_path):
    run = tmp_path / "run"
    with ExperimentStore(run) as s:
        for step in (1, 2):
            add(s, step=step, hash=f"done{step}", status="done", val_acc=0.5, reward=1.0)
            record(s, step)
        done = add(s, step=3, hash="done3", status="done", val_acc=0.7, reward=2.0)
        running = add(s, step=3, hash="running3")
        s.start_child(running)
        pending = add(s, step=3, hash="pending3")
        # The driver dies here: step 3 was never recorded.
    with ExperimentStore.open_existing(run) as s:
        assert s.last_completed_step() == 2
        assert int(s.load_controller_state()["step"]) == 2
        assert s.mark_in_flight_lost() == 2
        assert [s.child(i).status for i in (done, running, pending)] == ["done", "lost", "lost"]
        assert s.child(running).error == "lost: the search stopped while this child was running"
        assert s.child(running).finished is not None
        assert s.find_done_by_hash("done3").id == done  # the rerun of step 3 reuses it
        assert s.mark_in_flight_lost() == 0


def test_a_reader_sees_committed_rows_while_the_driver_holds_the_store_open(store):
    add(store, hash="a", status="done", val_acc=0.5, reward=1.0)
    with ExperimentStore.open_existing(store.run_dir) as reader:
        assert [c.hash for c in reader.children()] == ["a"]
        add(store, hash="b")
        assert [c.hash for c in reader.children()] == ["a", "b"]


def test_opening_a_folder_without_a_store_for_resume_names_the_folder(tmp_path):
    with pytest.raises(StoreError, match=rf"^{re.escape(str(tmp_path))}: not a run folder \(no search.sqlite\)$"):
        ExperimentStore.open_existing(tmp_path)
    assert not (tmp_path / STORE_FILE).exists()  # resuming never creates one


def test_opening_a_file_that_is_not_sqlite_names_the_folder(tmp_path):
    (tmp_path / STORE_FILE).write_bytes(b"this is not a database, it is a long enough line of text" * 4)
    with pytest.raises(StoreError, match=rf"^{re.escape(str(tmp_path))}: search.sqlite is not a usable experiment store"):
        ExperimentStore.open_existing(tmp_path)


def test_opening_an_sqlite_file_of_another_program_names_the_folder_and_the_missing_tables(tmp_path):
    other = sqlite3.connect(tmp_path / STORE_FILE)
    other.execute("CREATE TABLE run (key TEXT, value TEXT)")
    other.commit()
    other.close()
    with pytest.raises(StoreError, match=rf"^{re.escape(str(tmp_path))}: search.sqlite is not an experiment store "
                                         r"\(no table children, controller_state, steps\)$"):
        ExperimentStore.open_existing(tmp_path)


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    ExperimentStore(tmp_path).close()
    raw = sqlite3.connect(tmp_path / STORE_FILE)
    raw.execute("UPDATE run SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="store schema version 99, this easc reads versions 1 to 3"):
        ExperimentStore.open_existing(tmp_path)


def test_a_run_folder_path_that_is_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"file: cannot create the run folder"):
        ExperimentStore(tmp_path / "file")


def test_loading_a_controller_state_that_does_not_exist_names_the_folder(store):
    with pytest.raises(StoreError, match="no completed step, so no controller state to resume from"):
        store.load_controller_state()
    with pytest.raises(StoreError, match="no controller state for step 4"):
        store.load_controller_state(4)


def test_an_unreadable_controller_state_blob_is_a_store_error(store):
    record(store, 1)
    store._db.execute("UPDATE controller_state SET blob = x'00' WHERE step = 1")
    with pytest.raises(StoreError, match="the controller state of step 1 is unreadable"):
        store.load_controller_state(1)


@pytest.mark.parametrize("call, message", [
    (lambda s, i: s.update_child(i, color="red"), "children have no updatable column color"),
    (lambda s, i: s.update_child(i, id=5), "children have no updatable column id"),
    (lambda s, i: s.update_child(i, status="exploded"), "child status 'exploded' is not one of"),
    (lambda s, i: s.update_child(i + 100, status="done"), r"no child \d+"),
    (lambda s, i: s.child(i + 100), r"no child \d+"),
    (lambda s, i: add(s, status="queued"), "child status 'queued' is not one of"),
    (lambda s, i: s.children(status="queued"), "child status 'queued' is not one of"),
])
def test_child_operations_refuse_unknown_columns_statuses_and_ids(store, call, message):
    child = add(store)
    with pytest.raises(StoreError, match=message):
        call(store, child)
