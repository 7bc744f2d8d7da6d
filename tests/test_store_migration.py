"""Run folders of store schema version 1 (easc before stages and slots) are upgraded, not refused.

The version-1 database is a real one: a small hill-climb search (`--parent best`, what version 1 ran) is
written back into the version-1 tables, with the columns, keys and statements version 1 had (the DDL below
is version 1's, from git history), and its last step left unfinished with a child in flight, as a killed
version-1 driver leaves it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3

import pytest
import torch
from click.testing import CliRunner

from easc.cli.main import main
from easc.search import store_migrations
from easc.search.runs import report_data
from easc.search.store import SCHEMA_VERSION, STORE_FILE, ExperimentStore, StoreError

from searches import children_of, resume_search, run_search, steps_of

FAST = dict(dataset="digits", children=3, epochs=1, start_epochs=1, wider_actions=1, deeper_actions=1,
            threads=1, quiet=True, seed=0)

V1_SCHEMA = (
    "CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE children (
    id            INTEGER PRIMARY KEY,
    parent_id     INTEGER REFERENCES children(id),
    step          INTEGER NOT NULL,
    actions       TEXT NOT NULL,
    hash          TEXT NOT NULL,
    widths        TEXT NOT NULL,
    depth         INTEGER NOT NULL,
    params        INTEGER NOT NULL,
    val_acc       REAL,
    reward        REAL,
    train_seconds REAL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'cached', 'lost')),
    error         TEXT,
    weights_path  TEXT,
    created       TEXT NOT NULL,
    finished      TEXT
)""",
    "CREATE INDEX children_by_hash ON children (hash, status)",
    "CREATE INDEX children_by_step ON children (step)",
    """CREATE TABLE steps (
    step         INTEGER PRIMARY KEY,
    mean_val_acc REAL,
    best_val_acc REAL,
    mean_reward  REAL,
    baseline     REAL,
    n_children   INTEGER NOT NULL,
    finished     TEXT NOT NULL
)""",
    "CREATE TABLE controller_state (step INTEGER PRIMARY KEY, blob BLOB NOT NULL)",
)
# Options version 1 did not have: its saved configurations lack these keys.
NEW_OPTIONS = ("image_size", "augmentation", "skip_bad_images", "parent", "stages", "stage_epochs",
               "max_layers_per_block", "max_layers", "max_params", "widen_transitions", "augment")
V1_CHILD_COLUMNS = store_migrations.V1_COLUMNS["children"]


def v1_state(blob: bytes) -> bytes:
    """A controller state as version 1 saved it: its search space had no layer limits."""
    state = torch.load(io.BytesIO(blob), weights_only=True)
    state["space"] = {k: v for k, v in state["space"].items() if k not in ("max_layers_per_block", "max_layers")}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_as_schema_1(run_dir, unfinished_step: int | None = None) -> None:
    """Rewrite `run_dir`'s store in the version-1 tables; `unfinished_step`: drop that step's row and controller
    state and leave its last child 'running' (a version-1 driver killed while training it)."""
    path = run_dir / STORE_FILE
    old = sqlite3.connect(path)
    children = old.execute(f"SELECT {', '.join(V1_CHILD_COLUMNS)} FROM children ORDER BY id").fetchall()
    steps = old.execute("SELECT step, mean_val_acc, best_val_acc, mean_reward, baseline, n_children, finished "
                        "FROM steps ORDER BY step").fetchall()
    states = [(step, v1_state(blob)) for step, blob in
              old.execute("SELECT step, blob FROM controller_state ORDER BY step").fetchall()]
    run = dict(old.execute("SELECT key, value FROM run").fetchall())
    old.close()
    for suffix in ("", "-wal", "-shm"):
        (run_dir / (STORE_FILE + suffix)).unlink(missing_ok=True)
    config = {k: v for k, v in json.loads(run["config"]).items() if k not in NEW_OPTIONS}
    run.update(schema_version="1", config=json.dumps(config, sort_keys=True))
    if unfinished_step is not None:
        steps = [s for s in steps if s[0] != unfinished_step]
        states = [s for s in states if s[0] != unfinished_step]
        last = max(c[0] for c in children if c[2] == unfinished_step)
        status, weights, finished = (V1_CHILD_COLUMNS.index(k) for k in ("status", "weights_path", "finished"))
        children = [c[:status] + ("running",) + c[status + 1:] if c[0] == last else c for c in children]
        children = [c[:weights] + (None,) + c[weights + 1:finished] + (None,) if c[0] == last else c
                    for c in children]
    db = sqlite3.connect(path)
    for statement in V1_SCHEMA:
        db.execute(statement)
    db.executemany("INSERT INTO run (key, value) VALUES (?, ?)", sorted(run.items()))
    db.executemany(f"INSERT INTO children VALUES ({', '.join('?' * len(V1_CHILD_COLUMNS))})", children)
    db.executemany("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)", steps)
    db.executemany("INSERT INTO controller_state VALUES (?, ?)", states)
    db.commit()
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


def schema_of(run_dir) -> tuple:
    db = sqlite3.connect(run_dir / STORE_FILE)
    try:
        version = db.execute("SELECT value FROM run WHERE key = 'schema_version'").fetchone()[0]
        return version, tuple(r[1] for r in db.execute("PRAGMA table_info(children)"))
    finally:
        db.close()


def digest(run_dir) -> str:
    return hashlib.sha256((run_dir / STORE_FILE).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def v1_run(tmp_path_factory):
    """A version-1 hill climb of 2 steps whose step 2 was interrupted, and the version-2 run it came from."""
    out = tmp_path_factory.mktemp("v1") / "run"
    run_search(out, parent="best", steps=2, **FAST)
    original = out.parent / "original"
    shutil.copytree(out, original)
    write_as_schema_1(out, unfinished_step=2)
    return out, original


def test_a_reader_upgrades_a_schema_1_run_in_memory_and_writes_nothing(tmp_path, v1_run):
    run = tmp_path / "run"
    shutil.copytree(v1_run[0], run)
    before = digest(run)
    data = report_data(run)
    assert digest(run) == before and schema_of(run) == ("1", V1_CHILD_COLUMNS)
    assert data["parent"] == "best"  # version 1 ran the hill climb
    assert [s["step"] for s in data["steps"]] == [1]
    assert [(st["stage"], st["start_child"]) for st in data["stages"]] == [(1, 1)]
    with ExperimentStore.open_existing(run) as store:
        with pytest.raises(StoreError, match="opened to read only; resume the search"):
            store.mark_in_flight_lost()
    result = CliRunner().invoke(main, ["report", str(run), "--json", "--no-plots"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parent"] == "best" and digest(run) == before


def test_a_schema_1_run_is_upgraded_under_the_lock_and_resumes_as_the_hill_climb_it_was(tmp_path, v1_run):
    run = tmp_path / "run"
    shutil.copytree(v1_run[0], run)
    old = {c[0]: c for c in sqlite3.connect(run / STORE_FILE).execute(
        "SELECT id, step, status, hash, val_acc FROM children").fetchall()}
    resume_search(run, steps=3)
    version, columns = schema_of(run)
    assert version == str(SCHEMA_VERSION) and columns[-3:] == ("stage", "role", "idx")
    with ExperimentStore.open_existing(run) as store:
        assert store.run_info()["migrated_from_schema"] == "1"
        config = store.config()
        assert (config["parent"], config["widen_transitions"]) == ("best", False)
        assert config["max_layers_per_block"] == store_migrations.NO_LIMIT
        children = store.children()
        # Step 2 ran again: its children that had finished keep their rows and results, the one in flight
        # trained again in its own row; no row of the run is left 'lost'.
        for c in children:
            if c.id in old and old[c.id][2] == "done":
                assert (c.status, c.hash, c.val_acc) == ("done", old[c.id][3], old[c.id][4])
        assert [c.status for c in children if c.step == 2] == ["done"] * 3
        assert not [c for c in children if c.status == "lost"]
        assert [(c.role, c.step, c.idx) for c in children if c.step == 0] == [("start", 0, None)]
        assert [[c.idx for c in children if c.step == s] for s in (1, 2, 3)] == [[0, 1, 2]] * 3
        # The hill climb: step 3's parent is the best network of steps 0-2.
        best = store.best_before(3)
        assert {c.parent_id for c in children if c.step == 3} == {best.id}
    assert [s.step for s in steps_of(run)] == [1, 2, 3]
    result = CliRunner().invoke(main, ["report", str(run), "--json", "--no-plots"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["parent"], len(report["steps"]), report["children"]) == ("best", 3, 10)


def test_an_upgrade_that_fails_half_way_leaves_the_schema_1_file_as_it_was(tmp_path, v1_run, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(v1_run[0], run)
    before = digest(run)

    def disk_error(db):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(store_migrations.STEPS, 2, disk_error)  # after version 1 -> 2 ran, before the commit
    with pytest.raises(StoreError, match="disk I/O error"):
        ExperimentStore.open_existing(run, lock=True)
    assert schema_of(run) == ("1", V1_CHILD_COLUMNS)
    monkeypatch.undo()
    with ExperimentStore.open_existing(run, lock=True) as store:  # a later open upgrades it in full
        assert store.run_info()["schema_version"] == str(SCHEMA_VERSION)
    assert digest(run) != before


@pytest.mark.parametrize("damage, message", [
    ("UPDATE run SET value = '{not json' WHERE key = 'config'", "the saved configuration is not a JSON object"),
    ("ALTER TABLE steps DROP COLUMN baseline", "table steps lacks column baseline"),
    ("ALTER TABLE children ADD COLUMN stage INTEGER", "table children has column stage that schema 1 does not"),
    ("UPDATE run SET value = '0' WHERE key = 'schema_version'", "store schema version 0, this easc reads"),
])
@pytest.mark.parametrize("command", ["report", "resume"])
def test_a_corrupt_schema_1_run_is_one_line_error(tmp_path, v1_run, damage, message, command):
    run = tmp_path / "run"
    shutil.copytree(v1_run[0], run)
    db = sqlite3.connect(run / STORE_FILE)
    db.execute(damage)
    db.commit()
    db.close()
    before = digest(run)
    args = ["report", str(run), "--json", "--no-plots"] if command == "report" else \
        ["search", "--resume", str(run), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert digest(run) == before


def test_the_original_run_and_the_upgraded_one_report_the_same_children(v1_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(v1_run[0], run)
    upgraded = children_of(run)  # in memory: the file stays version 1
    original = children_of(v1_run[1])
    assert [(c.id, c.step, c.parent_id, c.hash, c.stage, c.role, c.idx) for c in upgraded] == \
        [(c.id, c.step, c.parent_id, c.hash, c.stage, c.role, c.idx) for c in original]
