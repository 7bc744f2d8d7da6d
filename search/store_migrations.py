"""Upgrading an experiment store written by an earlier easc to the current schema.

Each step takes a database of schema version v to v + 1 through an open sqlite3 connection. The caller
(`ExperimentStore`) runs every step needed, and the new version number, inside ONE transaction: SQLite's
`ALTER TABLE` and `CREATE` are transactional, so a crash or an error half-way leaves the file exactly as it
was (still the old version), never half-upgraded. The search driver upgrades the file itself, holding the run
folder's lock; a reader (`easc report`, `easc export`) upgrades a copy in memory and leaves the file untouched.

Version 1 -> 2 (stages and slots; easc before `--parent`, `--stages` and exact resume)
    children gain `stage` (1), `role` ('start' for the start network, else 'child') and `idx` (a child's
    index within its step); steps gain `stage` (1); a unique index on (step, role, idx).
    - The start network is the step-0 row without a parent. A version-1 driver stopped while training it
      left a 'lost' row before the trained one, so the trained row (else the last one) becomes the start
      net, the others stay children of step 0 without a slot: the resumed run must find the trained one.
    - `idx`: a version-1 step wrote all its rows, in index order, before training any, and a resumed step
      wrote a new set after the old one. A step's last `children` rows are therefore its last attempt,
      child 0 to `children` - 1; earlier attempts keep no slot (they stay in the store, as history).
      Only the step being run again on resume uses its slots, and a slot whose architecture differs from
      the child sampled for it is simply overwritten (`Search._place`), so a misjudged attempt boundary
      (a version-1 driver stopped while sampling) costs a retrained child, never a wrong result.
    - The saved configuration gains the options version 1 did not have, set to what version 1 did: every
      child from the best network so far (`parent = "best"`: the hill climb), no depth limits, no DenseNet
      stem and transition widening. Without them a resumed version-1 run would silently become a different
      search (the defaults are the paper's protocol).

Version 2 -> 3 (final training records)
    a `final_trainings` table: which final training (`easc train --final`) ran on a network of the run.
"""

from __future__ import annotations

import json
import sqlite3

NO_LIMIT = 0  # max_layers(_per_block) 0: no depth limit (version 1 had none)
V1_PROTOCOL = {"parent": "best", "max_layers_per_block": NO_LIMIT, "max_layers": NO_LIMIT,
               "widen_transitions": False}

V1_COLUMNS = {
    "children": ("id", "parent_id", "step", "actions", "hash", "widths", "depth", "params", "val_acc", "reward",
                 "train_seconds", "status", "error", "weights_path", "created", "finished"),
    "steps": ("step", "mean_val_acc", "best_val_acc", "mean_reward", "baseline", "n_children", "finished"),
    "controller_state": ("step", "blob"),
}

FINAL_TRAININGS_TABLE = """
CREATE TABLE final_trainings (
    id           INTEGER PRIMARY KEY,
    child_id     INTEGER REFERENCES children(id), -- the run's network that was trained; NULL: not one of the run's
    model        TEXT NOT NULL,                  -- the model file given to easc train
    hash         TEXT NOT NULL,                  -- canonical hash of its architecture
    weights      TEXT NOT NULL CHECK (weights IN ('reinitialised', 'kept')),
    data         TEXT NOT NULL CHECK (data IN ('train+validation', 'train')),
    train_images INTEGER NOT NULL,
    augment      TEXT NOT NULL,
    epochs       INTEGER NOT NULL,
    lr           REAL NOT NULL,
    seed         INTEGER NOT NULL,
    val_acc      REAL,                           -- NULL when no validation image was held out
    test_acc     REAL,
    seconds      REAL,
    output       TEXT,                           -- the trained model's file, as given to -o (NULL: none written)
    finished     TEXT NOT NULL                   -- ISO 8601, UTC
)
"""


class MigrationError(Exception):
    """A store that claims an old schema version but does not have its tables: a corrupt run."""


def _columns(db: sqlite3.Connection, table: str) -> tuple:
    return tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))


def _v1_to_v2(db: sqlite3.Connection) -> None:
    for table, expected in V1_COLUMNS.items():
        found = _columns(db, table)
        if found != expected:
            missing = [c for c in expected if c not in found]
            extra = [c for c in found if c not in expected]
            what = f"lacks column {missing[0]}" if missing else f"has column {extra[0]} that schema 1 does not"
            raise MigrationError(f"table {table} {what}")
    config = _saved_config(db)
    for statement in (
        "ALTER TABLE children ADD COLUMN stage INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE children ADD COLUMN role TEXT NOT NULL DEFAULT 'child' CHECK (role IN ('child', 'start'))",
        "ALTER TABLE children ADD COLUMN idx INTEGER",
        "ALTER TABLE steps ADD COLUMN stage INTEGER NOT NULL DEFAULT 1",
    ):
        db.execute(statement)
    starts = db.execute("SELECT id, status FROM children WHERE step = 0 AND parent_id IS NULL ORDER BY id").fetchall()
    if starts:
        trained = [row[0] for row in starts if row[1] == "done"]
        start = trained[0] if trained else starts[-1][0]
        db.execute("UPDATE children SET role = 'start' WHERE id = ?", (start,))
    per_step = config.get("children") if config else None
    rows = db.execute("SELECT id, step FROM children WHERE role = 'child' AND step >= 1 ORDER BY step, id").fetchall()
    by_step: dict = {}
    for child_id, step in rows:
        by_step.setdefault(step, []).append(child_id)
    for ids in by_step.values():
        size = per_step if isinstance(per_step, int) and not isinstance(per_step, bool) and per_step >= 1 \
            else len(ids)
        last_attempt = ids[(len(ids) - 1) // size * size:]
        db.executemany("UPDATE children SET idx = ? WHERE id = ?", list(enumerate(last_attempt)))
    db.execute("CREATE UNIQUE INDEX children_by_slot ON children (step, role, idx) WHERE idx IS NOT NULL")
    if config is not None:
        db.execute("UPDATE run SET value = ? WHERE key = 'config'",
                   (json.dumps({**V1_PROTOCOL, **config}, sort_keys=True),))


def _v2_to_v3(db: sqlite3.Connection) -> None:
    db.execute(FINAL_TRAININGS_TABLE)


def _saved_config(db: sqlite3.Connection) -> dict | None:
    row = db.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
    if row is None:
        return None
    try:
        config = json.loads(row[0])
    except (TypeError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise MigrationError("the saved configuration is not a JSON object")
    return config


STEPS = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(db: sqlite3.Connection, version: int, target: int) -> None:
    """Take `db` from schema `version` to `target`; the caller holds a transaction around it."""
    for v in range(version, target):
        STEPS[v](db)
    db.execute("UPDATE run SET value = ? WHERE key = 'schema_version'", (str(target),))
    db.execute("INSERT INTO run (key, value) VALUES ('migrated_from_schema', ?) "
               "ON CONFLICT (key) DO NOTHING", (str(version),))

