"""Weight reuse against training from scratch: what inheriting the parent's weights buys a search.

The same search is run in several arms. Same seed, start net, search space, controller and training
schedule; only the weights a child starts training from differ:

    reuse          children inherit their parent's trained weights (EAS), E epochs each
    scratch x1     every child re-initialised (`SearchConfig.inherit = False`), E epochs each
    scratch xk     re-initialised, k*E epochs each, k = 2, 4, ... up to --max-multiple; the ladder
                   stops at the first k whose best validation accuracy reaches reuse's best

The controller takes identical decisions in step 1 of every arm (same parent, same policy state, same
pass generators); from step 2 on each arm's policy has learned from its own rewards and its parent is its
own best child, so the searches drift apart. Children trained in two arms with the same architecture
(same structural hash) are compared pairwise as well: that isolates the effect of the weights.

Compute is counted per arm as
    child-epochs   epochs summed over every trained child, start net included (cached children cost 0)
    train s        per-child training seconds summed (the store's train_seconds; one thread, one worker)
    cpu s          CPU seconds of the whole search process (training, passes, controller, store)
    mean params    mean parameter count of the trained children (bigger children cost more per epoch)
and, from the reuse run's children in training order, the compute reuse needed before its best-so-far
reached each scratch arm's best.

    python benchmarks/bench_reuse.py --quick          # digits, about 5 CPU-minutes
    python benchmarks/bench_reuse.py                  # digits, larger; add --data-dir DIR for CIFAR-10 too
    python benchmarks/bench_reuse.py --smoke          # seconds; checks the script works

Prints a table and writes benchmarks/results/bench_reuse.json (and bench_reuse.png beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_reuse.json"

# Sizes per mode: steps, children per step, epochs per child (E), largest scratch multiple, seeds.
PRESETS = {
    "smoke": {"steps": 1, "children": 2, "epochs": 1, "max_multiple": 2, "seeds": 1},
    "quick": {"steps": 3, "children": 3, "epochs": 2, "max_multiple": 4, "seeds": 1},
    "full": {"steps": 4, "children": 6, "epochs": 4, "max_multiple": 8, "seeds": 2},
}
CIFAR_PRESETS = {  # CPU-hours per epoch on CIFAR-10 are large: keep the arms small, give --device cuda
    "smoke": {"steps": 1, "children": 2, "epochs": 1, "max_multiple": 2, "seeds": 1},
    "quick": {"steps": 2, "children": 3, "epochs": 1, "max_multiple": 4, "seeds": 1},
    "full": {"steps": 3, "children": 5, "epochs": 3, "max_multiple": 8, "seeds": 1},
}


def run_search(dataset, data_dir, seed, steps, children, epochs, inherit, device, threads, workdir) -> dict:
    """One search; returns its children (training order) and the compute it used."""
    from easc.search.config import SearchConfig
    from easc.search.loop import Search
    from easc.search.store import ExperimentStore

    out = Path(workdir) / f"{dataset}_seed{seed}_{'reuse' if inherit else 'scratch'}_e{epochs}"
    config = SearchConfig(dataset=dataset, data_dir=data_dir, seed=seed, steps=steps, children=children,
                          epochs=epochs, inherit=inherit, devices=[device], threads=threads, quiet=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    search = Search.start(config, out)
    try:
        summary = search.run()
    finally:
        search.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    with ExperimentStore.open_existing(out) as store:
        rows = []
        for c in store.children():  # ids are assigned in training order
            trained = c.status == "done"
            rows.append({"child": c.id, "step": c.step, "status": c.status, "hash": c.hash, "val_acc": c.val_acc,
                         "params": c.params, "epochs": (config.start_epochs if c.step == 0 else epochs) if trained else 0,
                         "train_seconds": (c.train_seconds or 0.0) if trained else 0.0})
    return {"seed": seed, "inherit": inherit, "epochs": epochs, "run": str(out), "best_val_acc": summary.best_val_acc,
            "start_val_acc": summary.start_val_acc, "failed": summary.failed, "children": rows,
            "child_epochs": sum(r["epochs"] for r in rows),
            "train_seconds": sum(r["train_seconds"] for r in rows), "cpu_seconds": cpu, "wall_seconds": wall,
            "mean_params": statistics.mean([r["params"] for r in rows if r["epochs"]] or [0])}


def best_so_far_curve(run: dict) -> list:
    """[(cumulative child-epochs, cumulative train seconds, best val acc so far)] in training order."""
    curve, epochs, seconds, best = [], 0, 0.0, 0.0
    for r in run["children"]:
        epochs += r["epochs"]
        seconds += r["train_seconds"]
        if r["val_acc"] is not None:
            best = max(best, r["val_acc"])
        curve.append((epochs, seconds, best))
    return curve


def compute_to_reach(run: dict, target: float) -> dict | None:
    """The child-epochs and train seconds `run` spent until its best-so-far reached `target` (None: never)."""
    for epochs, seconds, best in best_so_far_curve(run):
        if best >= target:
            return {"child_epochs": epochs, "train_seconds": seconds}
    return None


def paired_architectures(a: dict, b: dict) -> dict:
    """Children with the same architecture trained in both runs: val acc in a against val acc in b."""
    first = {}
    for r in b["children"]:
        if r["status"] == "done" and r["step"] > 0:
            first.setdefault(r["hash"], r["val_acc"])
    pairs = []
    seen = set()
    for r in a["children"]:
        if r["status"] == "done" and r["step"] > 0 and r["hash"] in first and r["hash"] not in seen:
            seen.add(r["hash"])
            pairs.append((r["val_acc"], first[r["hash"]]))
    if not pairs:
        return {"n": 0}
    return {"n": len(pairs), "mean_a": statistics.mean(p[0] for p in pairs),
            "mean_b": statistics.mean(p[1] for p in pairs),
            "median_diff": statistics.median(p[0] - p[1] for p in pairs),
            "a_wins": sum(p[0] > p[1] for p in pairs)}


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def arm_summary(name: str, multiple: int, runs: list) -> dict:
    return {"arm": name, "multiple": multiple, "epochs": runs[0]["epochs"], "inherit": runs[0]["inherit"],
            "best_val_acc": mean(r["best_val_acc"] for r in runs),
            "best_val_acc_per_seed": [r["best_val_acc"] for r in runs],
            "child_epochs": mean(r["child_epochs"] for r in runs),
            "train_seconds": mean(r["train_seconds"] for r in runs),
            "cpu_seconds": mean(r["cpu_seconds"] for r in runs),
            "mean_params": mean(r["mean_params"] for r in runs),
            "failed": sum(r["failed"] for r in runs)}


def warm_up(dataset, data_dir, device, threads, workdir) -> None:
    """A throwaway one-child search, so that no arm's CPU seconds include imports and first-call costs."""
    run_search(dataset, data_dir, 0, 1, 1, 1, True, device, threads, Path(workdir) / "warm-up")


def bench_dataset(dataset, data_dir, sizes, device, threads, workdir, log=print) -> dict:
    seeds = list(range(sizes["seeds"]))
    E = sizes["epochs"]
    warm_up(dataset, data_dir, device, threads, workdir)

    def arm(inherit, epochs):
        runs = []
        for seed in seeds:
            run = run_search(dataset, data_dir, seed, sizes["steps"], sizes["children"], epochs, inherit, device,
                             threads, workdir)
            log(f"  {dataset} seed {seed}: {'reuse' if inherit else 'scratch'} {epochs} epochs: best "
                f"{run['best_val_acc']:.4f}, {run['child_epochs']} child-epochs, {run['train_seconds']:.1f} s training")
            runs.append(run)
        return runs

    reuse = arm(True, E)
    arms = {"reuse": (1, reuse), "scratch x1": (1, arm(False, E))}
    target = mean(r["best_val_acc"] for r in reuse)
    multiple, matched_at = 1, None
    while True:
        best = mean(r["best_val_acc"] for r in arms[f"scratch x{multiple}"][1])
        if best is not None and target is not None and best >= target:
            matched_at = multiple
            break
        if multiple * 2 > sizes["max_multiple"]:
            break
        multiple *= 2
        arms[f"scratch x{multiple}"] = (multiple, arm(False, multiple * E))

    scratch1 = arms["scratch x1"][1]
    reach = {}  # per scratch arm, per seed: what reuse spent until it matched that arm's best
    for name, (_, runs) in arms.items():
        if name == "reuse":
            continue
        reach[name] = []
        for r, s in zip(reuse, runs):
            got = compute_to_reach(r, s["best_val_acc"])
            reach[name].append({"seed": r["seed"], "target": s["best_val_acc"], "reached": got is not None,
                                **(got or {}), "scratch_child_epochs": s["child_epochs"],
                                "scratch_train_seconds": s["train_seconds"]})
    pairs = [paired_architectures(r, s) for r, s in zip(reuse, scratch1)]
    return {
        "dataset": dataset, "sizes": sizes, "seeds": seeds,
        "arms": [arm_summary(name, m, runs) for name, (m, runs) in arms.items()],
        "reuse_best_val_acc": target,
        "scratch_epochs_to_match_reuse": None if matched_at is None else matched_at * E,
        "scratch_multiple_to_match_reuse": matched_at,
        "reuse_to_reach_scratch": reach,
        "same_architecture_reuse_vs_scratch_x1": pairs,
        "curves": {name: [{"seed": r["seed"], "points": best_so_far_curve(r)} for r in runs]
                   for name, (_, runs) in arms.items()},
        "runs": {name: [{k: v for k, v in r.items() if k != "children"} for r in runs]
                 for name, (_, runs) in arms.items()},
    }


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def print_table(result: dict) -> None:
    s = result["sizes"]
    print(f"\n{result['dataset']}: {s['steps']} steps x {s['children']} children, E = {s['epochs']} epochs, "
          f"seeds {result['seeds']} (means over seeds)")
    print(f"{'arm':<12} | {'epochs':>6} | {'best val acc':>12} | {'child-epochs':>12} | {'train s':>8} | {'cpu s':>8} | "
          f"{'mean params':>11}")
    print("-" * 87)
    for a in result["arms"]:
        print(f"{a['arm']:<12} | {a['epochs']:>6} | {_fmt(a['best_val_acc']):>12} | {_fmt(a['child_epochs'], '.0f'):>12} | "
              f"{_fmt(a['train_seconds'], '.1f'):>8} | {_fmt(a['cpu_seconds'], '.1f'):>8} | {_fmt(a['mean_params'], ',.0f'):>11}")
    E = s["epochs"]
    need = result["scratch_epochs_to_match_reuse"]
    print(f"from scratch, epochs per child to match reuse's best ({_fmt(result['reuse_best_val_acc'])}): "
          + (f"{need} (x{result['scratch_multiple_to_match_reuse']})" if need else
             f"not matched within {s['max_multiple'] * E} (x{s['max_multiple']})"))
    for name, rows in result["reuse_to_reach_scratch"].items():
        for r in rows:
            if r["reached"]:
                print(f"seed {r['seed']}: reuse reached {name}'s best ({r['target']:.4f}) after {r['child_epochs']} "
                      f"child-epochs / {r['train_seconds']:.1f} s (that arm spent {r['scratch_child_epochs']} / "
                      f"{r['scratch_train_seconds']:.1f} s in all)")
            else:
                print(f"seed {r['seed']}: reuse never reached {name}'s best ({r['target']:.4f})")
    for seed, p in zip(result["seeds"], result["same_architecture_reuse_vs_scratch_x1"]):
        if p["n"]:
            print(f"seed {seed}: {p['n']} architectures trained in both: mean val acc reuse {p['mean_a']:.4f}, "
                  f"scratch {p['mean_b']:.4f}; median difference {p['median_diff']:+.4f}; reuse better in "
                  f"{p['a_wins']}/{p['n']}")


def headline(result: dict) -> list:
    arms = {a["arm"]: a for a in result["arms"]}
    d = result["dataset"]
    rows = [{"metric": f"{d}: best val acc, reuse / scratch x1",
             "value": f"{_fmt(arms['reuse']['best_val_acc'])} / {_fmt(arms['scratch x1']['best_val_acc'])}"},
            {"metric": f"{d}: child-epochs, reuse / scratch x1",
             "value": f"{_fmt(arms['reuse']['child_epochs'], '.0f')} / {_fmt(arms['scratch x1']['child_epochs'], '.0f')}"}]
    need = result["scratch_epochs_to_match_reuse"]
    rows.append({"metric": f"{d}: epochs per child from scratch to match reuse's best",
                 "value": f"{need} (reuse: {result['sizes']['epochs']})" if need else
                 f"> {result['sizes']['max_multiple'] * result['sizes']['epochs']}"})
    x1 = result["reuse_to_reach_scratch"]["scratch x1"]
    reached = [r for r in x1 if r["reached"]]
    rows.append({"metric": f"{d}: child-epochs reuse needs to reach scratch x1's best / scratch x1 spent",
                 "value": (f"{mean(r['child_epochs'] for r in reached):.0f} / "
                           f"{mean(r['scratch_child_epochs'] for r in reached):.0f} "
                           f"({len(reached)}/{len(x1)} seeds reached)") if reached else "not reached"})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes on one core")
    mode.add_argument("--smoke", action="store_true", help="seconds: checks that the script runs")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--children", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="E: epochs per child in the reuse arm")
    p.add_argument("--max-multiple", type=int, default=None, help="largest k of the scratch xk ladder")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="a folder with cifar-10-batches-py/: also benchmark CIFAR-10")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)

    def sizes(presets):
        out = dict(presets[mode_name])
        for key in out:
            if getattr(args, key) is not None:
                out[key] = getattr(args, key)
        return out

    datasets = [("digits", None, sizes(PRESETS))]
    if args.data_dir:
        datasets.append(("cifar10", args.data_dir, sizes(CIFAR_PRESETS)))
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_reuse_") as tmp:
        workdir = args.keep_runs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, data_dir, size in datasets:
            results.append(bench_dataset(name, data_dir, size, args.device, args.threads, workdir))
    print(f"\nweight reuse against training from scratch ({mode_name}), device {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for r in results:
        print_table(r)
    report = {"benchmark": "bench_reuse", "mode": mode_name, "device": args.device, "threads": args.threads,
              "torch": torch.__version__, "python": platform.python_version(), "seconds": time.perf_counter() - t0,
              "headline": [row for r in results for row in headline(r)], "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {png}")
    return report


def plot(results: list, path: Path) -> Path:
    """Best-so-far validation accuracy against cumulative child-epochs, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        for name, curves in result["curves"].items():
            for i, c in enumerate(curves):
                xs = [pt[0] for pt in c["points"]]
                ys = [pt[2] for pt in c["points"]]
                ax.step(xs, ys, where="post", label=name if i == 0 else None,
                        color=None if i == 0 else ax.lines[-1].get_color(), alpha=1.0 if i == 0 else 0.5)
        ax.set_xlabel("child-epochs of training (cumulative)")
        ax.set_ylabel("best validation accuracy so far")
        ax.set_title(f"{result['dataset']}: weight reuse vs from scratch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
