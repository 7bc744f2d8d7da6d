"""RL controller against random search at equal budget, over several seeds.

Two experiments, reported separately:

1. **Real training (digits).** Full `easc` searches, `--strategy rl` and `--strategy random`, with the same
   seed, start net, steps, children per step and child epochs, for each of several seeds, under the paper's
   protocol `--parent start` (every child is a fresh copy of the start net changed by the sampled actions,
   so the controller learns which transformations *of that net* pay off; `--parent best` is selectable). Per controller
   step: the mean validation accuracy of the step's children, the step's best, and the best so far
   (start net included), each as mean +- standard deviation across seeds. Children whose architecture
   was already trained are not trained again, so the number of trained children is reported as well.
   Real training is expensive on a CPU; the quick setting is small and its curves are noisy.

2. **Synthetic reward (controller only, no training).** The controller samples networks on the token
   simulator (`simulate_episode`: 4 Net2Wider then 5 Net2Deeper actions from a fixed demo net) and is
   rewarded with a known function of the architecture in place of validation accuracy (the same function
   as tests/test_controller.py: new 3x3 conv layers and a wider first conv score, other kernels cost;
   "accuracy" = 0.5 + 0.4 s, s in [-0.3, 1], random choices average ~0.58). Cheap, so it runs many steps
   and shows whether REINFORCE learns; it says nothing about real accuracy.

    python benchmarks/bench_rl_vs_random.py --quick     # 3 seeds x 4 steps x 5 children x 2 epochs
    python benchmarks/bench_rl_vs_random.py             # 3 seeds x 8 steps x 8 children x 4 epochs
    python benchmarks/bench_rl_vs_random.py --smoke     # seconds; checks the script works

Headline figures: per strategy, the mean and the best validation accuracy of the *last* step (its children,
not the best so far), each as mean +- standard deviation across seeds, on digits and on the synthetic task.

Prints tables and writes benchmarks/results/bench_rl_vs_random.json and bench_rl_vs_random.png.
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

RESULTS = Path(__file__).resolve().parent / "results" / "bench_rl_vs_random.json"
STRATEGIES = ("rl", "random")

PRESETS = {  # real: seeds, steps, children, epochs; synthetic: seeds, steps, networks per step
    "smoke": {"seeds": 2, "steps": 1, "children": 2, "epochs": 1, "syn_seeds": 2, "syn_steps": 3, "syn_networks": 4},
    "quick": {"seeds": 3, "steps": 4, "children": 5, "epochs": 2, "syn_seeds": 3, "syn_steps": 30, "syn_networks": 10},
    "full": {"seeds": 3, "steps": 8, "children": 8, "epochs": 4, "syn_seeds": 5, "syn_steps": 50, "syn_networks": 10},
}


# ------------------------------------------------------------------------------------------ real training

def run_search(strategy, seed, steps, children, epochs, threads, workdir, parent="start") -> dict:
    from easc.search.config import SearchConfig
    from easc.search.loop import Search
    from easc.search.runs import report_data

    out = Path(workdir) / f"{strategy}_seed{seed}"
    config = SearchConfig(dataset="digits", strategy=strategy, seed=seed, steps=steps, children=children,
                          epochs=epochs, threads=threads, quiet=True, parent=parent)
    t0 = time.perf_counter()
    search = Search.start(config, out)
    try:
        search.run()
        trained = sum(c.status == "done" for c in search.store.children() if c.step > 0)
    finally:
        search.close()
    data = report_data(out)
    start = data["start"]["val_acc"]
    best = start or 0.0
    rows = [{"step": 0, "mean_val_acc": start, "best_val_acc": start, "best_so_far": start}]  # the start net
    for s in data["steps"]:
        if s["best_val_acc"] is not None:
            best = max(best, s["best_val_acc"])
        rows.append({"step": s["step"], "mean_val_acc": s["mean_val_acc"], "best_val_acc": s["best_val_acc"],
                     "best_so_far": best})
    return {"strategy": strategy, "seed": seed, "start_val_acc": data["start"]["val_acc"], "steps": rows,
            "trained_children": trained, "failed": data["failed"], "seconds": time.perf_counter() - t0}


def _run_search_star(args):
    import torch

    torch.set_num_threads(args[5])
    return run_search(*args)


def mean_sd(values) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def per_step(runs: list, keys) -> list:
    """Mean and standard deviation across seeds of each key, per step."""
    n = min(len(r["steps"]) for r in runs)
    out = []
    for i in range(n):
        row = {"step": runs[0]["steps"][i]["step"]}
        for key in keys:
            m, sd = mean_sd(r["steps"][i][key] for r in runs)
            row[key] = m
            row[key + "_sd"] = sd
        out.append(row)
    return out


def real_experiment(sizes, threads, workdir, jobs=1, log=print, parent="start") -> dict:
    """Every (seed, strategy) search; `jobs` > 1 runs that many at once in worker processes.

    Accuracies do not depend on `jobs` (each search is seeded and trains on one thread on CPU); only the
    reported seconds per search do.
    """
    tasks = [(strategy, seed) for seed in range(sizes["seeds"]) for strategy in STRATEGIES]
    args = [(strategy, seed, sizes["steps"], sizes["children"], sizes["epochs"], threads, workdir, parent)
            for strategy, seed in tasks]
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_run_search_star, args))
    else:
        done = [run_search(*a) for a in args]
    runs = {s: [] for s in STRATEGIES}
    for run in done:
        last = run["steps"][-1] if run["steps"] else {}
        log(f"  digits seed {run['seed']} {run['strategy']:>6}: last step mean {last.get('mean_val_acc') or 0:.4f}, "
            f"best so far {last.get('best_so_far') or 0:.4f}, {run['trained_children']} trained, "
            f"{run['seconds']:.0f} s")
        runs[run["strategy"]].append(run)
    keys = ("mean_val_acc", "best_val_acc", "best_so_far")
    summary = {}
    for s in STRATEGIES:
        steps = per_step(runs[s], keys)
        all_means = [row["mean_val_acc"] for r in runs[s] for row in r["steps"]
                     if row["step"] > 0 and row["mean_val_acc"] is not None]
        summary[s] = {
            "per_step": steps,
            "mean_val_acc_all_steps": statistics.mean(all_means) if all_means else None,
            "final_best_so_far": mean_sd(r["steps"][-1]["best_so_far"] for r in runs[s] if r["steps"]),
            "last_step_mean": mean_sd(r["steps"][-1]["mean_val_acc"] for r in runs[s] if r["steps"]),
            "last_step_best": mean_sd(r["steps"][-1]["best_val_acc"] for r in runs[s] if r["steps"]),
            "trained_children": statistics.mean(r["trained_children"] for r in runs[s]),
            "seconds": statistics.mean(r["seconds"] for r in runs[s]),
        }
    return {"dataset": "digits", "parent": parent,
            "sizes": {k: sizes[k] for k in ("seeds", "steps", "children", "epochs")},
            "summary": summary, "runs": runs}


# ---------------------------------------------------------------------------------------- synthetic reward

def synthetic_run(strategy, seed, steps, networks) -> dict:
    from easc.search.synthetic import demo_tokens, synthetic_accuracy
    from easc.search.controller import Episode, RandomPolicy, ReinforcePolicy, simulate_episode
    from easc.search.tokens import SearchSpace

    space = SearchSpace.small()
    policy = (ReinforcePolicy if strategy == "rl" else RandomPolicy)(space, seed=seed)
    rows, best = [], 0.0
    for step in range(1, steps + 1):
        accs, episodes = [], []
        for _ in range(networks):
            decisions, child = simulate_episode(policy, demo_tokens())
            acc = synthetic_accuracy(child, space)
            accs.append(acc)
            episodes.append(Episode.from_accuracy(decisions, acc))
        policy.update(episodes)
        best = max(best, max(accs))
        rows.append({"step": step, "mean_val_acc": statistics.mean(accs), "best_val_acc": max(accs),
                     "best_so_far": best})
    return {"strategy": strategy, "seed": seed, "steps": rows}


def synthetic_experiment(sizes, log=print) -> dict:
    runs = {s: [synthetic_run(s, seed, sizes["syn_steps"], sizes["syn_networks"]) for seed in range(sizes["syn_seeds"])]
            for s in STRATEGIES}
    summary = {}
    for s in STRATEGIES:
        steps = per_step(runs[s], ("mean_val_acc", "best_val_acc", "best_so_far"))
        k = max(1, len(steps) // 6)  # first and last sixth of the steps
        summary[s] = {"per_step": steps,
                      "first_steps_mean": statistics.mean(r["mean_val_acc"] for r in steps[:k]),
                      "last_steps_mean": statistics.mean(r["mean_val_acc"] for r in steps[-k:]),
                      "window": k,
                      "mean_all_steps": statistics.mean(r["mean_val_acc"] for r in steps),
                      "last_step_mean": mean_sd(r["steps"][-1]["mean_val_acc"] for r in runs[s]),
                      "last_step_best": mean_sd(r["steps"][-1]["best_val_acc"] for r in runs[s])}
        log(f"  synthetic {s:>6}: mean score steps 1-{k} {summary[s]['first_steps_mean']:.3f}, last {k} "
            f"{summary[s]['last_steps_mean']:.3f}")
    # Every network is sampled from the same start tokens: the synthetic task is --parent start by construction.
    return {"parent": "start",
            "sizes": {"seeds": sizes["syn_seeds"], "steps": sizes["syn_steps"], "networks": sizes["syn_networks"]},
            "summary": summary, "runs": runs}


# ------------------------------------------------------------------------------------------------- output

def _pm(pair, spec=".4f"):
    m, sd = pair if isinstance(pair, tuple) else (pair, None)
    if m is None:
        return "-"
    return format(m, spec) + ("" if sd is None else " +- " + format(sd, spec))


def print_tables(real: dict, syn: dict) -> None:
    s = real["sizes"]
    print(f"\n1. real training on digits, --parent {real['parent']}: {s['seeds']} seeds x {s['steps']} steps x "
          f"{s['children']} children x {s['epochs']} epochs; mean +- sd across seeds; step 0 is the start net")
    print(f"{'step':>4} | {'rl mean acc':>17} | {'random mean acc':>17} | {'rl best so far':>17} | "
          f"{'random best so far':>18}")
    print("-" * 86)
    rl, rnd = real["summary"]["rl"]["per_step"], real["summary"]["random"]["per_step"]
    for a, b in zip(rl, rnd):
        print(f"{a['step']:>4} | {_pm((a['mean_val_acc'], a['mean_val_acc_sd'])):>17} | "
              f"{_pm((b['mean_val_acc'], b['mean_val_acc_sd'])):>17} | "
              f"{_pm((a['best_so_far'], a['best_so_far_sd'])):>17} | {_pm((b['best_so_far'], b['best_so_far_sd'])):>18}")
    for name in STRATEGIES:
        r = real["summary"][name]
        print(f"{name:>6}: last step mean {_pm(r['last_step_mean'])}, last step best {_pm(r['last_step_best'])}; "
              f"mean over all steps {_pm(r['mean_val_acc_all_steps'])}, trained children per search "
              f"{r['trained_children']:.1f}, {r['seconds']:.0f} s per search")
    s = syn["sizes"]
    print(f"\n2. synthetic reward (controller only, no training): {s['seeds']} seeds x {s['steps']} steps x "
          f"{s['networks']} networks; score = 0.5 + 0.4 s, mean +- sd across seeds")
    rl, rnd = syn["summary"]["rl"]["per_step"], syn["summary"]["random"]["per_step"]
    shown = sorted({0, len(rl) // 4, len(rl) // 2, 3 * len(rl) // 4, len(rl) - 1})
    print(f"{'step':>4} | {'rl mean score':>15} | {'random mean score':>17}")
    print("-" * 42)
    for i in shown:
        a, b = rl[i], rnd[i]
        print(f"{a['step']:>4} | {_pm((a['mean_val_acc'], a['mean_val_acc_sd']), '.3f'):>15} | "
              f"{_pm((b['mean_val_acc'], b['mean_val_acc_sd']), '.3f'):>17}")
    for name in STRATEGIES:
        r = syn["summary"][name]
        print(f"{name:>6}: last step mean {_pm(r['last_step_mean'], '.3f')}, last step best "
              f"{_pm(r['last_step_best'], '.3f')}")


def plot(real: dict, syn: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = ((axes[0], real, "validation accuracy",
               f"real training, digits ({real['sizes']['seeds']} seeds, {real['sizes']['children']} children/step, "
               f"{real['sizes']['epochs']} epochs)"),
              (axes[1], syn, "synthetic score (0.5 + 0.4 s)",
               f"synthetic reward, controller only ({syn['sizes']['seeds']} seeds, no training)"))
    for ax, exp, ylabel, title in panels:
        for name, color in (("rl", "tab:blue"), ("random", "tab:orange")):
            rows = exp["summary"][name]["per_step"]
            xs = [r["step"] for r in rows]
            for key, style, label in (("mean_val_acc", "-", "mean per step"), ("best_so_far", "--", "best so far")):
                ys = [r[key] for r in rows]
                sd = [r[key + "_sd"] or 0.0 for r in rows]
                ax.plot(xs, ys, style, color=color, marker="o" if len(xs) < 12 else None, label=f"{name}: {label}")
                ax.fill_between(xs, [y - d for y, d in zip(ys, sd)], [y + d for y, d in zip(ys, sd)], color=color,
                                alpha=0.12)
        ax.set_xlabel("controller step" + (" (0: the start net)" if exp is real else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("RL controller vs random search at equal budget (mean \u00b1 sd across seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def headline(real: dict, syn: dict) -> list:
    r, q = real["summary"]["rl"], real["summary"]["random"]
    sr, sq = syn["summary"]["rl"], syn["summary"]["random"]
    sz = real["sizes"]
    setting = f"{sz['seeds']} seeds x {sz['steps']} steps x {sz['children']} children x {sz['epochs']} ep"
    return [
        {"metric": f"digits ({setting}): mean val acc, all steps, rl / random",
         "value": f"{r['mean_val_acc_all_steps']:.4f} / {q['mean_val_acc_all_steps']:.4f}"},
        {"metric": f"digits (--parent {real['parent']}): last step mean val acc, rl / random",
         "value": f"{_pm(r['last_step_mean'])} / {_pm(q['last_step_mean'])}"},
        {"metric": f"digits (--parent {real['parent']}): last step best val acc, rl / random",
         "value": f"{_pm(r['last_step_best'])} / {_pm(q['last_step_best'])}"},
        {"metric": "synthetic (--parent start): last step mean score, rl / random",
         "value": f"{_pm(sr['last_step_mean'], '.3f')} / {_pm(sq['last_step_mean'], '.3f')}"},
        {"metric": "synthetic (--parent start): last step best score, rl / random",
         "value": f"{_pm(sr['last_step_best'], '.3f')} / {_pm(sq['last_step_best'], '.3f')}"},
        {"metric": "digits: best val acc found, rl / random",
         "value": f"{_pm(r['final_best_so_far'])} / {_pm(q['final_best_so_far'])}"},
        {"metric": f"synthetic reward ({syn['sizes']['steps']} steps): rl mean score first -> last {sr['window']} steps",
         "value": f"{sr['first_steps_mean']:.3f} -> {sr['last_steps_mean']:.3f} (random {sq['mean_all_steps']:.3f})"},
    ]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 seeds x 4 steps x 5 children x 2 epochs")
    mode.add_argument("--smoke", action="store_true", help="seconds: checks that the script runs")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--children", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--syn-steps", type=int, default=None, help="steps of the synthetic-reward experiment")
    p.add_argument("--syn-seeds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--parent", choices=("start", "best"), default="start",
                   help="the searches' --parent [default: start, the paper's protocol]")
    p.add_argument("--jobs", type=int, default=None,
                   help="searches run at once in worker processes [default: 2 with --quick or the full size, "
                        "1 with --smoke]; accuracies do not depend on it")
    p.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = dict(PRESETS[mode_name])
    for key in sizes:
        if getattr(args, key, None) is not None:
            sizes[key] = getattr(args, key)

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        workdir = args.keep_runs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        jobs = args.jobs or (1 if args.smoke else max(1, min(2, os.cpu_count() or 1)))
        real = real_experiment(sizes, args.threads, workdir, jobs, parent=args.parent)
    syn = synthetic_experiment(sizes)
    print(f"\nRL vs random search at equal budget ({mode_name}), torch {torch.__version__}, {args.threads} thread(s)")
    print_tables(real, syn)
    report = {"benchmark": "bench_rl_vs_random", "mode": mode_name, "threads": args.threads,
              "torch": torch.__version__, "python": platform.python_version(), "seconds": time.perf_counter() - t0,
              "headline": headline(real, syn), "real_digits": real, "synthetic_reward": syn}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot(real, syn, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {png}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
