"""Reading a finished (or running) search: the report's figures and the children's networks.

`report_data(run_dir)` is the `easc report --json` schema:

    {"start": {"val_acc"}, "best": {"child", "val_acc", "params", "depth"},
     "steps": [{"step", "mean_val_acc", "best_val_acc", "mean_reward", "baseline"}],
     "children": N, "failed": N,
     "parent": "start" | "best",
     "stages": [{"stage", "first_step", "steps", "start_child", "source_child", "start_val_acc", "best_val_acc"}],
     "final_trainings": [{"child", "weights", "data", "train_images", "augment", "epochs", "lr", "seed",
                          "val_acc", "test_acc", "model", "output", "finished"}]}

plus a few extra fields (strategy, leaderboard). `final_trainings` lists every `easc train --final` run on a
network of the run (see `final_training_run`), oldest first: `weights` "reinitialised" | "kept" (--keep-weights),
`data` "train+validation" | "train" (--hold-out-validation), `child` the run's child it trained (null when
the network is none of the run's). `children` counts the networks the run trained or reused
(start nets included); children lost in flight by a stopped driver are not counted (a resumed step trains
them again in the same row). Opening a run never writes to it.
"""

from __future__ import annotations

from pathlib import Path

from easc.ir import Graph, load_graph

from .store import CHILDREN_DIR, STORE_FILE, ExperimentStore, StoreError


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
            "final_trainings": [{"child": f["child_id"], "weights": f["weights"], "data": f["data"],
                                 "train_images": f["train_images"], "augment": f["augment"], "epochs": f["epochs"],
                                 "lr": f["lr"], "seed": f["seed"], "val_acc": f["val_acc"], "test_acc": f["test_acc"],
                                 "model": f["model"], "output": f["output"], "finished": f["finished"]}
                                for f in store.final_trainings()],
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


def run_folder_of(path) -> Path | None:
    """The run folder `path` lies in (the nearest folder above it holding a store), or None."""
    for folder in Path(path).resolve().parents:
        if (folder / STORE_FILE).is_file() or (folder / STORE_FILE).is_symlink():
            return folder
    return None


def final_training_run(model, output) -> Path | None:
    """The run folder a final training belongs to: the one holding the model (a run's child file, or a network
    exported into the run folder), else the one the output goes into; None when neither is in one.

    The output may not replace a child's file under children/: it is that child's record (its weights are
    what the store says was trained). The run's other files cannot be hit: an output is an .onnx or .easir.
    """
    run = run_folder_of(model)
    if output is not None:
        out_run = run_folder_of(output)
        if out_run is not None:
            target = Path(output).resolve()
            if target.is_relative_to((out_run / CHILDREN_DIR).resolve()):
                raise StoreError(f"-o {output}: {out_run}/{CHILDREN_DIR}/ holds the search's networks; write the "
                                 f"final model elsewhere (e.g. {out_run}/final.easir)")
        run = run or out_run
    return run


def shown_path(path, run: Path) -> str:
    """`path` relative to the run folder when inside it (a run folder can be moved whole), else absolute."""
    full = Path(path).resolve()
    return full.relative_to(run.resolve()).as_posix() if full.is_relative_to(run.resolve()) else str(full)
