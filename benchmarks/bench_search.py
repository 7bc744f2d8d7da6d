"""Search throughput on CPU: the default digits search with one worker against a pool of two.

Each repeat runs the default digits search (`easc search --dataset digits`: parent start, 3 steps x 10
children, 4 Net2Wider + 5 Net2Deeper actions, 6 epochs; same seed, so the same children, bit for bit) once
with `--workers 1` (the in-process local executor) and once with `--workers 2` (a process pool of two spawned
workers, one torch thread each). The order alternates between repeats (1 2, 2 1, ...) so that drift of a
shared machine falls on both.

Figures:
- `children/min`: children trained in steps >= 1 per minute of the steps' wall time, measured from the end
  of the start net's training to the end of the last step. Pool start-up (spawning workers, importing
  torch, loading the data, a first optimiser step) happens while the start net trains, so it is left out:
  the rate a long search settles at.
- `wall s`: the whole `run()`, start-up included: what a short search costs.
- `all busy`: the fraction of each step's wall time (from the step's start to its controller update being
  committed) during which every worker is training a child, from the workers' own start and end times.
  The driver submits each child as soon as it is sampled and checked, so the workers train while it
  samples the next one, and a free worker takes the costliest child waiting; what is left idle is the
  step's head (the first children being sampled), its tail (the last children finishing unevenly) and the
  controller update between steps.
- `head / tail / update / gaps`: where the rest of a 2-worker step goes (`idle_breakdown`).
`ratio` is median(2 workers) / median(1 worker) of children/min; `paired` the median of per-repeat ratios.

    python benchmarks/bench_search.py [--repeats 2] [--steps 3] [--children 10] [--epochs 6]

Prints a table and writes benchmarks/results/bench_search.json. Two cores are enough to see the effect;
run it on an otherwise idle machine, since other jobs take cores from the pool first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_search.json"
WORKERS = (1, 2)


def _seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def all_busy_fraction(window: tuple, intervals: list, workers: int) -> float:
    """Share of `window` (start, end) during which at least `workers` of the (start, end) intervals overlap."""
    lo, hi = window
    events = sorted([(max(a, lo), 1) for a, b in intervals if b > lo and a < hi] +
                    [(min(b, hi), -1) for a, b in intervals if b > lo and a < hi])
    busy, running, last = 0.0, 0, lo
    for t, delta in events:
        if running >= workers:
            busy += t - last
        running += delta
        last = t
    return busy / (hi - lo) if hi > lo else 0.0


def idle_breakdown(window: tuple, intervals: list, workers: int) -> dict:
    """Where a step's not-all-busy time goes, in seconds: `head` (step start until every worker first trains),
    `tail` (from the last moment every worker trained to the end of the last child), `update` (end of the last
    child to the step's end: storing it, the controller update, the commit) and `gaps` (the rest: a worker
    waiting for its next child in mid-step)."""
    lo, hi = window
    inside = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    if not inside:
        return {"head": hi - lo, "tail": 0.0, "update": 0.0, "gaps": 0.0}
    events = sorted([(a, 1) for a, _ in inside] + [(b, -1) for _, b in inside])
    running, first_full, last_full = 0, None, None
    for t, delta in events:
        if running >= workers and delta < 0:
            last_full = t  # an all-busy stretch ends here
        running += delta
        if running >= workers and first_full is None:
            first_full = t
    last_end = max(b for _, b in inside)
    if first_full is None:  # never all busy: everything is head
        return {"head": last_end - lo, "tail": 0.0, "update": hi - last_end, "gaps": 0.0}
    busy = all_busy_fraction(window, intervals, workers) * (hi - lo)
    head, tail, update = first_full - lo, last_end - last_full, hi - last_end
    return {"head": head, "tail": tail, "update": update, "gaps": max(0.0, (hi - lo) - busy - head - tail - update)}


def one_search(workers: int, args, folder: Path) -> dict:
    from easc.search.config import SearchConfig
    from easc.search.loop import Search
    from easc.search.store import ExperimentStore

    config = SearchConfig(dataset="digits", steps=args.steps, children=args.children, epochs=args.epochs,
                          wider_actions=args.wider_actions, deeper_actions=args.deeper_actions, parent=args.parent,
                          seed=args.seed, workers=workers, threads=1, quiet=True)
    out = folder / f"workers{workers}"
    steps, jobs = {}, []

    def on_event(kind, **info):
        if kind == "step_start" and info["step"] >= 1:
            steps[info["step"]] = [time.time(), None]
        elif kind == "step_done":
            steps[info["step"]][1] = time.time()
        elif kind == "child_done" and info.get("started"):
            jobs.append((info["started"], info["ended"]))

    t0 = time.perf_counter()
    search = Search.start(config, out, on_event=on_event)
    try:
        summary = search.run()
    finally:
        search.close()
    wall = time.perf_counter() - t0
    with ExperimentStore.open_existing(out) as store:
        children = store.children()
        recorded = store.steps()
    start = children[0]
    trained = [c for c in children if c.step >= 1 and c.status == "done"]
    steady = _seconds_between(start.finished, recorded[-1].finished)
    busy = [all_busy_fraction(tuple(w), jobs, workers) for w in steps.values()]
    idle = [idle_breakdown(tuple(w), jobs, workers) for w in steps.values()]
    return {"workers": workers, "wall_seconds": wall, "steady_seconds": steady, "trained": len(trained),
            "cached": sum(c.status == "cached" for c in children), "failed": summary.failed,
            "children_per_min": 60 * len(trained) / steady, "all_busy": statistics.median(busy),
            "all_busy_per_step": busy, "step_seconds": statistics.median(b - a for a, b in steps.values()),
            "idle_seconds": {k: statistics.median(i[k] for i in idle) for k in ("head", "tail", "update", "gaps")},
            "best_val_acc": summary.best_val_acc}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--children", type=int, default=10, help="per step; even, so two workers share evenly")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--wider-actions", type=int, default=4)
    p.add_argument("--deeper-actions", type=int, default=5)
    p.add_argument("--parent", choices=("start", "best"), default="start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    load_start = [round(x, 2) for x in os.getloadavg()]  # other jobs take cores from the pool first
    runs = {w: [] for w in WORKERS}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        # Imports and the data set's first load are paid here, not by whichever run comes first.
        one_search(1, argparse.Namespace(**{**vars(args), "steps": 1, "children": 1, "epochs": 1}),
                   Path(tmp) / "warm-up")
        for r in range(args.repeats):
            order = WORKERS if r % 2 == 0 else WORKERS[::-1]
            for w in order:
                result = one_search(w, args, Path(tmp) / f"repeat{r}")
                runs[w].append(result)
                print(f"repeat {r + 1}/{args.repeats}, {w} worker(s): {result['children_per_min']:.1f} children/min, "
                      f"all busy {result['all_busy']:.0%}, {result['wall_seconds']:.1f} s", flush=True)

    def median(w, key):
        return statistics.median(run[key] for run in runs[w])

    # The same seed gives the same search whatever the executor: a check that the figures compare like with like.
    same = len({run["best_val_acc"] for w in WORKERS for run in runs[w]}) == 1
    ratio = median(2, "children_per_min") / median(1, "children_per_min")
    paired = statistics.median(b["children_per_min"] / a["children_per_min"] for a, b in zip(runs[1], runs[2]))

    print()
    print(f"search throughput on CPU: digits, parent {args.parent}, {args.steps} step(s) x {args.children} children, "
          f"{args.epochs} epoch(s), {args.wider_actions} wider + {args.deeper_actions} deeper actions, "
          f"{args.repeats} repeat(s), {os.cpu_count()} cores")
    print(f"{'workers':>7} | {'children/min':>12} | {'wall s':>7} | {'all busy':>8} | {'trained':>7}")
    print("-" * 54)
    for w in WORKERS:
        print(f"{w:>7} | {median(w, 'children_per_min'):>12.1f} | {median(w, 'wall_seconds'):>7.1f} | "
              f"{median(w, 'all_busy'):>8.0%} | {runs[w][0]['trained']:>7}")
    print(f"ratio (2 / 1 workers): {ratio:.2f}, paired {paired:.2f}; all workers busy (2 workers): "
          f"{median(2, 'all_busy'):.2f} of a step; same runs under both executors: {same}")
    idle = {k: statistics.median(run["idle_seconds"][k] for run in runs[2]) for k in ("head", "tail", "update", "gaps")}
    print(f"2 workers, per step (median): {statistics.median(run['step_seconds'] for run in runs[2]):.2f} s, of which "
          f"not all busy: head {idle['head']:.3f} s, tail {idle['tail']:.3f} s, update {idle['update']:.3f} s, "
          f"gaps {idle['gaps']:.3f} s")
    print(f"load average at start {load_start}, at end {[round(x, 2) for x in os.getloadavg()]} "
          f"(other jobs take cores from the pool first: quote the paired ratio)")

    report = {"benchmark": "bench_search", "device": "cpu", "python": platform.python_version(),
              "machine": platform.machine(), "cores": os.cpu_count(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_average_start": load_start,
              "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
              "median": {str(w): {k: median(w, k) for k in ("children_per_min", "wall_seconds", "steady_seconds",
                                                           "all_busy")} for w in WORKERS},
              "ratio": ratio, "paired_ratio": paired, "all_busy_2_workers": median(2, "all_busy"), "same_runs": same,
              "idle_seconds_2_workers": idle,
              "runs": {str(w): runs[w] for w in WORKERS}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
