"""The experiment store: one SQLite file per run folder, the search's memory across crashes.

``run_dir/search.sqlite`` holds every child network the search sampled (lineage, actions, metrics, status),
one row per completed controller step, and the controller's state after each completed step. Only the driver
process writes; readers (a dashboard, ``easc`` reporting commands) may read while it runs, which WAL allows.

Resume protocol
    A step is *completed* when its row in ``steps`` and its controller state are written; both go in one
    transaction, so after a crash either both exist or neither does. On resume the search
      1. calls ``mark_in_flight_lost()``: children left 'pending' or 'running' become 'lost' (their trainer
         died with the driver; 'lost' is kept apart from 'failed', which means training raised and earned
         reward 0);
      2. loads ``load_controller_state(last_completed_step())`` and runs the next step again. The restored
         generator makes the same decisions, so children already 'done' in that step are found by
         ``find_done_by_hash`` and reused: the resume loses at most the children that were in flight.

Durability
    ``synchronous=FULL``: a committed step survives a power loss, not only a process crash. The search writes
    a few rows per child, and each child trains for seconds to minutes, so an fsync per commit is cheap.

Errors
    Every SQLite error leaves a public method as a StoreError naming the run folder: a corrupt database
    (a page of garbage, a row whose JSON does not parse, a child file outside ``RUN/children/``) is a
    corrupt run; a write that finds the disk full is a ``StoreFullError`` (the CLI exits 1 for it, 2 for a
    corrupt run). A failed write rolls its transaction back, so the store stays readable.

Paths
    A child's ``weights_path`` is read back only if it resolves (symlinks followed) inside
    ``RUN/children/``: a database edited to point at ``/etc/passwd`` or ``../../x`` is a corrupt run, not a
    file to read.

Locking
    ``lock=True`` (the search driver) holds the run folder's lock (``runlock.py``) while the store is open;
    readers open without it.

Schema versions
    ``SCHEMA_VERSION`` is written at creation. A store of an earlier version is upgraded on open
    (``store_migrations.py``): by the lock holder in the file, in one transaction; by a reader in a copy in
    memory, which refuses writes. A later version, or one that is not a number, is refused in one line.

Final trainings
    ``final_trainings`` records each ``easc train --final`` run on a network of the run (which child, fresh or
    kept weights, train + validation or train only, the accuracies), written by the ``train`` command under
    the run lock; ``easc report`` shows them.

Controller state blobs
    ``torch.save`` of the policy's state dict (tensors, numbers, strings, lists, dicts), read back with
    ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects: opening a run folder cannot
    run code hidden in it. ``record_step`` reads each blob back before committing it, so a state the safe
    loader would refuse is refused at save time, not discovered at resume.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from easc import __version__ as easc_version

from .runlock import LOCK_FILE, RunLock
from .store_migrations import FINAL_TRAININGS_TABLE, MigrationError, migrate

__all__ = ["ExperimentStore", "StoreError", "StoreFullError", "ChildRecord", "StepRecord", "STORE_FILE",
           "CHILD_STATUSES", "CHILDREN_DIR"]

STORE_FILE = "search.sqlite"
CHILDREN_DIR = "children"  # every child file a run records lives under RUN/children/
SCHEMA_VERSION = 3  # 2: stages (children.stage/role/idx, steps.stage); 3: final_trainings (store_migrations.py)
# 'cached': the same canonical hash was already trained; the row copies that child's results.
# 'lost': was pending or running when the driver stopped (see mark_in_flight_lost); the resumed step trains
# it again in the same row (same id), so a finished search keeps no 'lost' row unless it stopped for good.
# Roles: 'start' is a stage's start net (stage 1: the start network at step 0; stage k > 1: the best network of
# the earlier stages, trained further, at the stage's first step); 'child' is a sampled network.
CHILD_ROLES = ("child", "start")
CHILD_STATUSES = ("pending", "running", "done", "failed", "cached", "lost")
_FINAL_STATUSES = ("done", "failed", "cached", "lost")
# Final training of a found network (easc train --final): fresh or inherited weights, on train + validation
# images or with the validation images held out.
FINAL_WEIGHTS = ("reinitialised", "kept")
FINAL_DATA = ("train+validation", "train")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


_FINAL_COLUMN_TYPES = {
    "child_id": lambda v: v is None or _is_count(v), "model": lambda v: isinstance(v, str),
    "weights": lambda v: isinstance(v, str), "data": lambda v: isinstance(v, str), "train_images": _is_count,
    "augment": lambda v: isinstance(v, str), "epochs": _is_count, "lr": _is_real, "seed": _is_count,
    "val_acc": lambda v: v is None or _is_real(v), "test_acc": lambda v: v is None or _is_real(v),
    "seconds": lambda v: v is None or _is_real(v), "output": lambda v: v is None or isinstance(v, str),
    "finished": lambda v: isinstance(v, str),
}

# One statement per entry: sqlite3 executes one at a time inside our transaction (executescript would commit).
_SCHEMA = (
    """
CREATE TABLE run (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
""",
    f"""
CREATE TABLE children (
    id            INTEGER PRIMARY KEY,            -- assigned in insertion order, so step-ordered
    parent_id     INTEGER REFERENCES children(id), -- NULL for the start network
    step          INTEGER NOT NULL,
    actions       TEXT NOT NULL,                  -- JSON list
    hash          TEXT NOT NULL,                  -- canonical hash of the architecture
    widths        TEXT NOT NULL,                  -- JSON list
    depth         INTEGER NOT NULL,
    params        INTEGER NOT NULL,
    val_acc       REAL,
    reward        REAL,
    train_seconds REAL,
    status        TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in CHILD_STATUSES)})),
    error         TEXT,
    weights_path  TEXT,                           -- relative to the run folder
    created       TEXT NOT NULL,                  -- ISO 8601, UTC
    finished      TEXT,
    stage         INTEGER NOT NULL DEFAULT 1,     -- 1-based
    role          TEXT NOT NULL DEFAULT 'child' CHECK (role IN ('child', 'start')),
    idx           INTEGER                         -- index of a child within its step (NULL for a start net)
)
""",
    "CREATE INDEX children_by_hash ON children (hash, status)",
    "CREATE INDEX children_by_step ON children (step)",
    "CREATE UNIQUE INDEX children_by_slot ON children (step, role, idx) WHERE idx IS NOT NULL",
    """
CREATE TABLE steps (
    step         INTEGER PRIMARY KEY,
    mean_val_acc REAL,
    best_val_acc REAL,
    mean_reward  REAL,
    baseline     REAL,
    n_children   INTEGER NOT NULL,
    finished     TEXT NOT NULL,
    stage        INTEGER NOT NULL DEFAULT 1
)
""",
    """
CREATE TABLE controller_state (
    step INTEGER PRIMARY KEY,
    blob BLOB NOT NULL
)
""",
    FINAL_TRAININGS_TABLE,
)

_JSON_COLUMNS = ("actions", "widths")


class StoreError(Exception):
    """A run folder that cannot be used, or a store operation that would break the run's bookkeeping."""


class StoreFullError(StoreError):
    """A write to the store failed for lack of room (disk or quota full, I/O error): the run itself is
    intact up to its last commit, but this session cannot go on."""


# SQLite result codes (sqlite3.Error.sqlite_errorcode & 0xff): a write that found no room, or an I/O error
# (a file-size limit surfaces as one), against everything else (corrupt pages, not a database, ...).
_SQLITE_IOERR, _SQLITE_FULL, _SQLITE_READONLY = 10, 13, 8


def _store_error(run_dir: Path, error: sqlite3.Error) -> StoreError:
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if code in (_SQLITE_FULL, _SQLITE_IOERR) or "disk is full" in reason:
        return StoreFullError(f"{run_dir}: cannot write {STORE_FILE} ({reason}); free some space and resume "
                              f"with --resume {run_dir}")
    if code == _SQLITE_READONLY:
        return StoreError(f"{run_dir}: cannot write {STORE_FILE} ({reason})")
    return StoreError(f"{run_dir}: {STORE_FILE} is corrupt ({reason}); the run cannot be read")


def _guard_sqlite_errors(cls):
    """Wrap every public method so that an SQLite error leaves it as a StoreError naming the run folder.

    A class decorator rather than a try in each method: a method added later is covered too, and a
    corrupt page can surface in any read, even while a result set is being iterated.
    """
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise _store_error(self.run_dir, e) from None
        return guarded

    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_") and not isinstance(value, (classmethod, staticmethod)):
            setattr(cls, name, wrap(value))
    return cls


@dataclass(frozen=True)
class ChildRecord:
    id: int
    parent_id: int | None
    step: int
    actions: list
    hash: str
    widths: list
    depth: int
    params: int
    val_acc: float | None
    reward: float | None
    train_seconds: float | None
    status: str
    error: str | None
    weights_path: str | None
    created: str
    finished: str | None
    stage: int = 1
    role: str = "child"
    idx: int | None = None


_UPDATABLE = frozenset(f.name for f in dataclasses.fields(ChildRecord)) - {"id", "created", "role", "idx"}


@dataclass(frozen=True)
class StepRecord:
    step: int
    mean_val_acc: float | None
    best_val_acc: float | None
    mean_reward: float | None
    baseline: float | None
    n_children: int
    finished: str
    stage: int = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _child(row: sqlite3.Row, run_dir: Path) -> ChildRecord:
    values = dict(row)
    where = f"{run_dir}: {STORE_FILE} is corrupt (child {values.get('id')}"
    for col in _JSON_COLUMNS:
        try:
            values[col] = json.loads(values[col])
        except (TypeError, ValueError):
            raise StoreError(f"{where}: column {col} is not valid JSON)") from None
        if not isinstance(values[col], list):
            raise StoreError(f"{where}: column {col} is not a JSON list)")
    path = values.get("weights_path")
    if path is not None:
        _check_child_file(run_dir, path, where)
    try:
        return ChildRecord(**values)
    except TypeError as e:  # a column this easc does not know
        raise StoreError(f"{where}: {e})") from None


def _check_child_file(run_dir: Path, path, where: str) -> Path:
    """`RUN/path`, if it resolves (symlinks followed) inside RUN/children/; a corrupt-run error otherwise."""
    if not isinstance(path, str) or not path or Path(path).is_absolute():
        raise StoreError(f"{where}: weights path {path!r} is not a path inside {CHILDREN_DIR}/)")
    if (run_dir / CHILDREN_DIR).is_symlink():
        raise StoreError(f"{where}: {CHILDREN_DIR}/ is a symlink)")
    children = (run_dir / CHILDREN_DIR).resolve()
    full = (run_dir / path).resolve()
    if not full.is_relative_to(children) or full == children:
        raise StoreError(f"{where}: weights path {path!r} is outside {CHILDREN_DIR}/)")
    return full


def _encode_state(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _decode_state(blob: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(blob), weights_only=True)


class ExperimentStore:
    """``ExperimentStore(run_dir)`` opens the run folder's store, creating folder and store if missing.

    ``create=False`` is for resuming: the folder must already be a run folder. ``lock=True`` takes the run
    folder's lock (``runlock.RunLockedError`` if another process holds it) until ``close()``. Use as a
    context manager or call ``close()``.
    """

    def __init__(self, run_dir: str | Path, *, create: bool = True, lock: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILE
        self._lock = None
        self._memory_copy = False  # a reader's upgraded copy of an older store (see _upgrade): never written
        # SQLite and the search follow symlinks: one planted as the database, its journal or children/ would
        # have them write outside the run folder.
        for name in (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm", CHILDREN_DIR, LOCK_FILE):
            if (self.run_dir / name).is_symlink():
                raise StoreError(f"{self.run_dir}: {name} is a symlink; a run folder holds its own files")
        exists = self.path.is_file()
        if not exists and not create:
            raise StoreError(f"{self.run_dir}: not a run folder (no {STORE_FILE})")
        if not exists:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{self.run_dir}: cannot create the run folder ({e.strerror})") from None
        if lock:
            try:
                self._lock = RunLock(self.run_dir)
            except OSError as e:
                raise StoreError(f"{self.run_dir}: cannot lock the run folder ({LOCK_FILE}: {e.strerror})") from None
            exists = self.path.is_file()  # another process may have created it before we got the lock
        try:
            # isolation_level=None: no implicit transactions; _transaction() says where each one begins and ends.
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            self._release()
            raise StoreError(f"{self.run_dir}: cannot open {STORE_FILE} ({e})") from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if exists:
                self._check_schema()
            else:
                self._create_schema()
        except sqlite3.Error as e:
            self._db.close()
            self._release()
            error = _store_error(self.run_dir, e)
            if isinstance(error, StoreFullError):
                raise error from None
            raise StoreError(f"{self.run_dir}: {STORE_FILE} is not a usable experiment store ({e})") from None
        except BaseException:
            self._db.close()
            self._release()
            raise

    @classmethod
    def open_existing(cls, run_dir: str | Path, *, lock: bool = False) -> ExperimentStore:
        """Open a run folder (to resume it: ``lock=True``); StoreError if it is not one."""
        return cls(run_dir, create=False, lock=lock)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _create_schema(self) -> None:
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._set("schema_version", str(SCHEMA_VERSION))
            self._set("created", _now())
            self._set("easc_version", easc_version)

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = {"run", "children", "steps", "controller_state"} - tables
        if missing:
            raise StoreError(f"{self.run_dir}: {STORE_FILE} is not an experiment store (no table "
                             f"{', '.join(sorted(missing))})")
        version = self.run_info().get("schema_version")
        number = int(version) if isinstance(version, str) and version.isdigit() and len(version) < 6 else None
        if number == SCHEMA_VERSION:
            return
        if number is None or not 1 <= number < SCHEMA_VERSION:
            raise StoreError(f"{self.run_dir}: store schema version {version}, this easc reads versions 1 to "
                             f"{SCHEMA_VERSION}")
        self._upgrade(number)

    def _upgrade(self, version: int) -> None:
        """Bring a store of an earlier schema to the current one (see store_migrations.py).

        The driver (``lock=True``) upgrades the file, once, in one transaction, under the run folder's lock:
        after a crash the file is either still the old version or fully upgraded. A reader takes no lock and
        never writes, so it upgrades a copy in memory (``Connection.backup`` copies the WAL's pages too).
        """
        if self._lock is None:
            memory = sqlite3.connect(":memory:", isolation_level=None)
            try:
                self._db.backup(memory)
            except BaseException:
                memory.close()
                raise
            self._db.close()
            self._db = memory
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA foreign_keys=ON")
        try:
            with self._transaction():
                migrate(self._db, version, SCHEMA_VERSION)
        except MigrationError as e:
            raise StoreError(f"{self.run_dir}: cannot upgrade {STORE_FILE} from schema version {version} to "
                             f"{SCHEMA_VERSION}: it is corrupt ({e})") from None
        self._memory_copy = self._lock is None

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._release()

    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._memory_copy:  # a write would be lost with the copy: only the lock holder writes an old store
            raise StoreError(f"{self.run_dir}: {STORE_FILE} has an older schema and was opened to read only; "
                             f"resume the search (easc search --resume {self.run_dir}) to upgrade it")
        # IMMEDIATE takes the write lock at the start, so a transaction never fails half-way on a busy lock.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk at COMMIT does); a second ROLLBACK would raise
            # "no transaction is active" over the real error.
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    # ------------------------------------------------------------------------------------------- run info

    def _set(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO run (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def record_config(self, config: dict[str, Any], *, strategy: str) -> None:
        """The run's configuration (JSON) and search strategy ('rl', 'random', ...)."""
        with self._transaction():
            self._set("config", json.dumps(config, sort_keys=True))
            self._set("strategy", strategy)

    def run_info(self) -> dict[str, str]:
        """The ``run`` table: schema_version, created, easc_version, config (JSON text), strategy."""
        return {r["key"]: r["value"] for r in self._db.execute("SELECT key, value FROM run ORDER BY key")}

    def config(self) -> dict[str, Any] | None:
        text = self.run_info().get("config")
        if text is None:
            return None
        try:
            config = json.loads(text)
        except (TypeError, ValueError):
            config = None
        if not isinstance(config, dict):
            raise StoreError(f"{self.run_dir}: {STORE_FILE} is corrupt (the saved configuration is not a JSON "
                             f"object)")
        return config

    def child_file(self, record: ChildRecord) -> Path:
        """The absolute path of a child's network file, checked to lie inside ``RUN/children/``."""
        if not record.weights_path:
            raise StoreError(f"{self.run_dir}: child {record.id} has no trained network (status {record.status})")
        return _check_child_file(self.run_dir, record.weights_path,
                                 f"{self.run_dir}: {STORE_FILE} is corrupt (child {record.id}")

    # ------------------------------------------------------------------------------------------- children

    def add_child(self, *, step: int, parent_id: int | None, actions: Sequence[Any], hash: str,
                  widths: Sequence[int], depth: int, params: int, status: str = "pending",
                  val_acc: float | None = None, reward: float | None = None, train_seconds: float | None = None,
                  error: str | None = None, weights_path: str | None = None, stage: int = 1,
                  role: str = "child", idx: int | None = None) -> int:
        """Insert a child and return its id. A 'cached' child is added with the results it copies."""
        self._check_status(status)
        if role not in CHILD_ROLES:
            raise StoreError(f"{self.run_dir}: child role {role!r} is not one of {', '.join(CHILD_ROLES)}")
        finished = _now() if status in _FINAL_STATUSES else None
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO children (parent_id, step, actions, hash, widths, depth, params, val_acc, reward, "
                "train_seconds, status, error, weights_path, created, finished, stage, role, idx) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (parent_id, step, json.dumps(list(actions)), hash, json.dumps(list(widths)), depth, params,
                 val_acc, reward, train_seconds, status, error, self._relative(weights_path), _now(), finished,
                 stage, role, idx))
        return int(cur.lastrowid)

    def update_child(self, child_id: int, **fields: Any) -> None:
        """Set some columns of a child; moving it to a final status stamps ``finished`` unless given."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise StoreError(f"{self.run_dir}: children have no updatable column {', '.join(sorted(unknown))}")
        if "status" in fields:
            self._check_status(fields["status"])
            if fields["status"] in _FINAL_STATUSES:
                fields.setdefault("finished", _now())
        for col in _JSON_COLUMNS:
            if col in fields:
                fields[col] = json.dumps(list(fields[col]))
        if "weights_path" in fields:
            fields["weights_path"] = self._relative(fields["weights_path"])
        if not fields:
            return
        assignments = ", ".join(f"{col} = ?" for col in fields)
        with self._transaction():
            cur = self._db.execute(f"UPDATE children SET {assignments} WHERE id = ?", (*fields.values(), child_id))
            if cur.rowcount != 1:
                raise StoreError(f"{self.run_dir}: no child {child_id}")

    def start_child(self, child_id: int) -> None:
        self.update_child(child_id, status="running")

    def finish_child(self, child_id: int, *, val_acc: float, reward: float, train_seconds: float,
                     weights_path: str | None = None) -> None:
        self.update_child(child_id, status="done", val_acc=val_acc, reward=reward, train_seconds=train_seconds,
                          weights_path=weights_path)

    def fail_child(self, child_id: int, error: str, *, train_seconds: float | None = None) -> None:
        """Training raised: the child earns reward 0 (PAPER.md's failed child)."""
        self.update_child(child_id, status="failed", error=error, reward=0.0, train_seconds=train_seconds)

    def child(self, child_id: int) -> ChildRecord:
        row = self._db.execute("SELECT * FROM children WHERE id = ?", (child_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.run_dir}: no child {child_id}")
        return _child(row, self.run_dir)

    def children(self, *, step: int | None = None, status: str | None = None) -> list[ChildRecord]:
        where, args = [], []
        if step is not None:
            where.append("step = ?")
            args.append(step)
        if status is not None:
            self._check_status(status)
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM children" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_child(r, self.run_dir) for r in self._db.execute(sql, args)]

    def find_done_by_hash(self, hash: str, before_step: int | None = None) -> ChildRecord | None:
        """The first trained child with this canonical hash (the search trains each architecture once).

        ``before_step``: only children of earlier steps, so that what a step finds does not depend on which of
        its own children happened to finish first (nor, after a resume, on what an interrupted run left).
        """
        sql, args = "SELECT * FROM children WHERE hash = ? AND status = 'done'", [hash]
        if before_step is not None:
            sql += " AND step < ?"
            args.append(before_step)
        row = self._db.execute(sql + " ORDER BY id LIMIT 1", args).fetchone()
        return None if row is None else _child(row, self.run_dir)

    def slot(self, step: int, role: str, idx: int | None = None, stage: int | None = None) -> ChildRecord | None:
        """The row of child ``idx`` of ``step`` (role 'child'), or of the start net of ``stage`` (role 'start')."""
        if role == "start":
            row = self._db.execute("SELECT * FROM children WHERE role = 'start' AND stage = ? ORDER BY id LIMIT 1",
                                   (stage,)).fetchone()
        else:
            row = self._db.execute("SELECT * FROM children WHERE role = ? AND step = ? AND idx = ?",
                                   (role, step, idx)).fetchone()
        return None if row is None else _child(row, self.run_dir)

    def best_before(self, step: int) -> ChildRecord | None:
        """The most accurate trained network of the steps before ``step`` (start nets included); ties: lowest id.

        Only completed steps count: a step's children are seen once the step is over, so an interrupted
        step's finished children cannot change the parent or a stage's start net of a resumed run.
        """
        row = self._db.execute(
            "SELECT * FROM children WHERE step < ? AND status IN ('done', 'cached') AND val_acc IS NOT NULL "
            "AND weights_path IS NOT NULL AND (step = 0 OR role = 'start' OR step IN (SELECT step FROM steps)) "
            "ORDER BY val_acc DESC, id ASC LIMIT 1", (step,)).fetchone()
        return None if row is None else _child(row, self.run_dir)

    def mark_in_flight_lost(self) -> int:
        """On resume: children left 'pending' or 'running' by a stopped driver become 'lost'; returns how many."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE children SET status = 'lost', finished = ?, "
                "error = 'lost: the search stopped while this child was ' || status "
                "WHERE status IN ('pending', 'running')", (_now(),))
        return cur.rowcount

    def leaderboard(self, k: int = 10) -> list[ChildRecord]:
        """The k trained children with the best validation accuracy ('cached' rows repeat a trained one)."""
        rows = self._db.execute("SELECT * FROM children WHERE status = 'done' AND val_acc IS NOT NULL "
                                "ORDER BY val_acc DESC, id ASC LIMIT ?", (k,))
        return [_child(r, self.run_dir) for r in rows]

    # ---------------------------------------------------------------------------------------------- steps

    def record_step(self, step: int, *, mean_val_acc: float | None, best_val_acc: float | None,
                    mean_reward: float | None, baseline: float | None, n_children: int,
                    controller_state: dict[str, Any], stage: int = 1) -> None:
        """Mark ``step`` completed together with the controller state after it, in one transaction."""
        # Encoded and read back before the transaction: a state that the safe loader would refuse at resume
        # (e.g. it holds an arbitrary object) is refused now, and changes nothing.
        try:
            blob = _encode_state(controller_state)
            _decode_state(blob)
        except Exception as e:
            raise StoreError(f"{self.run_dir}: the controller state of step {step} cannot be saved and loaded "
                             f"back safely ({type(e).__name__})") from e
        try:
            with self._transaction():
                self._db.execute("INSERT INTO steps (step, mean_val_acc, best_val_acc, mean_reward, baseline, "
                                 "n_children, finished, stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (step, mean_val_acc, best_val_acc, mean_reward, baseline, n_children, _now(),
                                  stage))
                self._db.execute("INSERT INTO controller_state (step, blob) VALUES (?, ?)", (step, blob))
        except sqlite3.IntegrityError:
            raise StoreError(f"{self.run_dir}: step {step} is already recorded") from None

    def last_completed_step(self) -> int | None:
        """The highest step with both its row and its controller state; None before the first."""
        row = self._db.execute("SELECT MAX(s.step) FROM steps s JOIN controller_state c ON c.step = s.step"
                               ).fetchone()
        return row[0]

    def load_controller_state(self, step: int | None = None) -> dict[str, Any]:
        """The controller state saved with ``step`` (default: the last completed step)."""
        if step is None:
            step = self.last_completed_step()
            if step is None:
                raise StoreError(f"{self.run_dir}: no completed step, so no controller state to resume from")
        row = self._db.execute("SELECT blob FROM controller_state WHERE step = ?", (step,)).fetchone()
        if row is None:
            raise StoreError(f"{self.run_dir}: no controller state for step {step}")
        try:
            return _decode_state(row[0])
        except Exception as e:
            raise StoreError(f"{self.run_dir}: the controller state of step {step} is unreadable "
                             f"({type(e).__name__})") from e

    def steps(self) -> list[StepRecord]:
        return [StepRecord(**dict(r)) for r in self._db.execute("SELECT * FROM steps ORDER BY step")]

    # ------------------------------------------------------------------------------------ final training

    def child_of_file(self, path: str | Path) -> ChildRecord | None:
        """The trained child whose network file is `path` (inside ``RUN/children/``), if any."""
        full = Path(path).resolve()
        children = (self.run_dir / CHILDREN_DIR).resolve()
        if not full.is_relative_to(children):
            return None
        for row in self._db.execute("SELECT * FROM children WHERE status = 'done' AND weights_path IS NOT NULL "
                                    "ORDER BY id"):
            if (self.run_dir / row["weights_path"]).resolve() == full:
                return _child(row, self.run_dir)
        return None

    def record_final_training(self, *, child_id: int | None, model: str, hash: str, weights: str, data: str,
                              train_images: int, augment: str, epochs: int, lr: float, seed: int,
                              val_acc: float | None, test_acc: float | None, seconds: float | None,
                              output: str | None) -> int:
        """Record which final training (`easc train --final`) ran on a network of this run; returns its id."""
        if weights not in FINAL_WEIGHTS or data not in FINAL_DATA:
            raise StoreError(f"{self.run_dir}: a final training is {'/'.join(FINAL_WEIGHTS)} weights on "
                             f"{'/'.join(FINAL_DATA)} images, not {weights!r} on {data!r}")
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO final_trainings (child_id, model, hash, weights, data, train_images, augment, epochs, "
                "lr, seed, val_acc, test_acc, seconds, output, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (child_id, model, hash, weights, data, train_images, augment, epochs, lr, seed, val_acc, test_acc,
                 seconds, output, _now()))
        return int(cur.lastrowid)

    def final_trainings(self) -> list[dict]:
        """Every recorded final training, oldest first (the fields of ``record_final_training``, plus id and
        finished)."""
        rows = [dict(r) for r in self._db.execute("SELECT * FROM final_trainings ORDER BY id")]
        for row in rows:  # SQLite keeps any type in any column: a row edited by hand is checked, not printed
            bad = next((k for k, ok in _FINAL_COLUMN_TYPES.items() if not ok(row.get(k))), None)
            if bad is None and (row["weights"] not in FINAL_WEIGHTS or row["data"] not in FINAL_DATA):
                bad = "weights" if row["weights"] not in FINAL_WEIGHTS else "data"
            if bad is not None:
                raise StoreError(f"{self.run_dir}: {STORE_FILE} is corrupt (final training {row.get('id')}: column "
                                 f"{bad} is {str(row.get(bad))[:40]!r})")
        return rows

    # ---------------------------------------------------------------------------------------------- misc

    def _check_status(self, status: str) -> None:
        if status not in CHILD_STATUSES:
            raise StoreError(f"{self.run_dir}: child status {status!r} is not one of {', '.join(CHILD_STATUSES)}")

    def _relative(self, weights_path: str | Path | None) -> str | None:
        """Weights paths are stored relative to the run folder, so a run folder can be moved or copied whole.

        A path already relative to the run folder is kept. A path that names the run folder itself, the way
        this store was opened (``run_dir / "children/c.bin"``, even when ``run_dir`` is relative to the
        working directory) or absolutely, has the folder taken off: callers naturally build paths that way.
        """
        if weights_path is None:
            return None
        p = Path(weights_path)
        for base in (self.run_dir, self.run_dir.resolve()):
            if p.is_relative_to(base):
                return p.relative_to(base).as_posix()
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(self.run_dir.resolve())
            except ValueError:
                raise StoreError(f"{self.run_dir}: weights path {p} is outside the run folder") from None
        # Checked on the way in as on the way out (_child): a path the store would refuse to read back is
        # refused now, before the run depends on it.
        _check_child_file(self.run_dir, p.as_posix(), f"{self.run_dir}: cannot record it (weights path")
        return p.as_posix()

    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]


_guard_sqlite_errors(ExperimentStore)
