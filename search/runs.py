"""Reading a finished (or running) search: the report's figures and the children's networks.

`report_data(run_dir)` is the `easc report --json` schema:

    {"start": {"val_acc"}, "best": {"child", "val_acc", "params", "depth"},
     "steps": [{"step", "mean_val_acc", "best_val_acc", "mean_reward", "baseline"}],
     "children": N, "failed": N,
     "parent": "start" | "best",
     "stages": [{"stage", "first_step", "steps", "start_child", "source_child", "start_val_acc", "best_val_acc"}]}

plus a few extra fields (strategy, leaderboard). `children` counts the networks the run trained or reused
(start nets included); children lost in flight by a stopped driver are not counted (a resumed step trains
them again in the same row). Opening a run never writes to it.
"""

from __future__ import annotations

from pathlib import Path

from easc.ir import Graph, load_graph

from .store import ExperimentStore, StoreError


def _open(run_dir) -> ExperimentStore:
    return ExperimentStore.open_existing(run_dir)  # no lock: a report may read while the search runs


def lineage(store: ExperimentStore, child_id: int) -> list:
    chain, current = [], child_id
    while current is not None:
        chain.append(current)
        current = store.child(current).parent_id
    return chain[::-1]


def report_data(run_dir, top: int = 10) -> dict:
    with _open(run_dir) as store:
        children = store.children()
        # The trained start net: a driver stopped while training it leaves a 'lost' row before the 'done' one.
        starts = [c for c in children if c.role == "start" and c.stage == 1]
        start = next((c for c in starts if c.status == "done"), starts[0] if starts else None)
        board = store.leaderboard(top)
        best = board[0] if board else None
        info = store.run_info()
        config = store.config() or {}
        steps = store.steps()
        live = [c for c in children if c.status != "lost"]
        stages = []
        for c in children:
            if c.role != "start":
                continue
            in_stage = [s for s in steps if s.stage == c.stage]
            bests = [s.best_val_acc for s in in_stage if s.best_val_acc is not None]
            stages.append({"stage": c.stage, "first_step": max(c.step, 1), "steps": len(in_stage),
                           "start_child": c.id, "source_child": c.parent_id, "start_val_acc": c.val_acc,
                           "best_val_acc": max(bests) if bests else None})
        return {
            "run": str(run_dir),
            "strategy": info.get("strategy"),
            "start": {"val_acc": start.val_acc if start else None,
                      "params": start.params if start else None, "depth": start.depth if start else None},
            "best": None if best is None else {"child": best.id, "val_acc": best.val_acc, "params": best.params,
                                               "depth": best.depth},
            "steps": [{"step": s.step, "mean_val_acc": s.mean_val_acc, "best_val_acc": s.best_val_acc,
                       "mean_reward": s.mean_reward, "baseline": s.baseline, "stage": s.stage} for s in steps],
            "children": len(live),
            "failed": sum(c.status == "failed" for c in live),
            "parent": config.get("parent"),
            "stages": stages,
            "leaderboard": [{"child": c.id, "val_acc": c.val_acc, "params": c.params, "depth": c.depth,
                             "widths": c.widths, "step": c.step, "lineage": lineage(store, c.id)} for c in board],
            "points": [{"child": c.id, "val_acc": c.val_acc, "params": c.params} for c in children
                       if c.status == "done" and c.val_acc is not None],
        }


def load_run_child(run_dir, child_id: int | None = None) -> Graph:
    """The trained network of `child_id`, or of the best child when None."""
    run_dir = Path(run_dir)
    with _open(run_dir) as store:
        if child_id is None:
            board = store.leaderboard(1)
            if not board:
                raise StoreError(f"{run_dir}: no trained child yet")
            record = board[0]
        else:
            record = store.child(child_id)
        # child_file refuses a path outside RUN/children/ (a database edited to point at /etc/passwd).
        return load_graph(store.child_file(record))
