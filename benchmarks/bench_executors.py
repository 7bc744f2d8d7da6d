"""Children trained per minute by each executor on CPU: in-process, 1 and 2 worker processes, Ray with 2.

The jobs are real search children: the digits start net transformed by the controller's sampled Net2Wider
and Net2Deeper actions (the passes of step 1 of a search), each trained for a few epochs, exactly as
`Search` hands them to an executor. Every executor gets the same jobs. Start-up (spawning workers,
importing torch, loading the data, Ray's own start) is timed apart from the steady rate: each executor is
created and warmed up with one job per worker first, then the timed batches run, executors in rotating
order per repeat so that drift of a shared machine falls on all of them; figures are medians over repeats.

Each worker uses one torch thread (`--threads`); with 2 workers on 2 cores the ideal speed-up is 2x.
Ray is skipped with a message when it is not installed (`pip install 'easc[ray]'`) or with --no-ray.

    python benchmarks/bench_executors.py --quick
    python benchmarks/bench_executors.py --smoke --no-ray

Prints a table and writes benchmarks/results/bench_executors.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "bench_executors.json"

PRESETS = {
    "smoke": {"children": 2, "epochs": 1, "repeats": 1},
    "quick": {"children": 12, "epochs": 3, "repeats": 3},
    "full": {"children": 16, "epochs": 3, "repeats": 3},
}


def make_jobs(n: int, epochs: int, threads: int, seed: int = 0) -> tuple:
    """(job factory, data spec): n children of the digits start net, as step 1 of a search samples them."""
    from easc.ir import graph_to_bytes
    from easc.search.config import SearchConfig
    from easc.search.loop import Search, resolve_defaults
    from easc.search.worker import ChildJob

    config = resolve_defaults(SearchConfig(dataset="digits", seed=seed, epochs=epochs, threads=threads, quiet=True))
    with tempfile.TemporaryDirectory() as tmp:
        search = Search(config, Path(tmp), None)  # no store: only its sampling of children is used
        probes = search._probe_set(0, search.start_graph)
        graphs = [graph_to_bytes(search._sample_child(search.start_graph, probes, 1, i)[0]) for i in range(n)]
        start = graph_to_bytes(search.start_graph)
    spec = search.data_spec
    train = {"epochs": epochs, "batch_size": config.batch_size, "lr": config.lr,
             "weight_decay": config.weight_decay}

    def jobs(first_id=0):
        return [ChildJob(first_id + i, g, spec, {**train, "seed": seed + i}) for i, g in enumerate(graphs)]

    def warmup(count):
        return [ChildJob(10_000 + i, start, spec, {**train, "epochs": 1, "seed": i}) for i in range(count)]

    return jobs, warmup


def drain(executor, jobs) -> tuple:
    """Seconds to train all `jobs` and how many failed."""
    t0 = time.perf_counter()
    failed = [o.error for o in executor.run(jobs) if o.status != "done"]
    return time.perf_counter() - t0, failed


def executors_to_test(threads: int, with_ray: bool) -> tuple:
    """[(label, workers, factory)], [skip messages]."""
    from easc.search.executors import make_executor

    out = [("in-process (local)", 1, lambda: make_executor("local", ["cpu"], 1, None, threads)),
           ("process pool x1", 1, lambda: make_executor("process", ["cpu"], 1, None, threads)),
           ("process pool x2", 2, lambda: make_executor("process", ["cpu"], 2, None, threads))]
    skipped = []
    if not with_ray:
        skipped.append("ray x2: skipped (--no-ray)")
    else:
        try:
            import ray  # noqa: F401

            out.append(("ray x2 (local instance)", 2, lambda: make_executor("ray", ["cpu"], 2, None, threads)))
        except ImportError:
            skipped.append("ray x2: skipped, Ray is not installed (pip install 'easc[ray]')")
    return out, skipped


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true", help="seconds: checks that the script runs")
    p.add_argument("--children", type=int, default=None, help="children per timed batch")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per child")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = dict(PRESETS[mode_name])
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    jobs, warmup = make_jobs(sizes["children"], sizes["epochs"], args.threads)
    candidates, skipped = executors_to_test(args.threads, not args.no_ray)
    for message in skipped:
        print(message)

    live, results = [], {}
    try:
        for label, workers, factory in candidates:
            t0 = time.perf_counter()
            try:
                executor = factory()
                _, failed = drain(executor, warmup(workers))
            except Exception as e:  # noqa: BLE001 - an executor that cannot start is reported, not fatal
                skipped.append(f"{label}: could not start ({type(e).__name__}: {str(e).splitlines()[0]})")
                print(skipped[-1])
                continue
            live.append((label, workers, executor))
            results[label] = {"workers": workers, "startup_seconds": time.perf_counter() - t0, "batch_seconds": [],
                              "failed": len(failed)}
        for r in range(sizes["repeats"]):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for label, _, executor in order:
                seconds, failed = drain(executor, jobs(1000 * r))
                results[label]["batch_seconds"].append(seconds)
                results[label]["failed"] += len(failed)
                if failed:
                    results[label]["errors"] = failed[:3]
                print(f"  repeat {r + 1}: {label}: {sizes['children']} children in {seconds:.1f} s")
    finally:
        for label, _, executor in live:
            executor.close()
        if any(label.startswith("ray") for label, _, _ in live):
            import ray

            ray.shutdown()

    base = None
    for label, res in results.items():
        res["median_seconds"] = statistics.median(res["batch_seconds"])
        res["children_per_minute"] = 60.0 * sizes["children"] / res["median_seconds"]
        if label.startswith("in-process"):
            base = res["children_per_minute"]
    for res in results.values():
        res["speedup_vs_in_process"] = res["children_per_minute"] / base if base else None

    print(f"\nchildren per minute on CPU ({mode_name}): {sizes['children']} digits children x {sizes['epochs']} epochs "
          f"per batch, {args.threads} thread(s) per worker, medians of {sizes['repeats']} repeat(s); "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{'executor':<24} | {'workers':>7} | {'children/min':>12} | {'vs in-process':>13} | {'start-up s':>10} | failed")
    print("-" * 85)
    for label, res in results.items():
        print(f"{label:<24} | {res['workers']:>7} | {res['children_per_minute']:>12.1f} | "
              f"{res['speedup_vs_in_process']:>12.2f}x | {res['startup_seconds']:>10.1f} | {res['failed']}")
    for message in skipped:
        print(message)
    headline = [{"metric": f"children/min, {label}", "value": f"{res['children_per_minute']:.1f} "
                 f"({res['speedup_vs_in_process']:.2f}x)"} for label, res in results.items()]
    headline += [{"metric": m.split(":")[0], "value": m.split(": ", 1)[1]} for m in skipped]
    report = {"benchmark": "bench_executors", "mode": mode_name, "sizes": sizes, "threads": args.threads,
              "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
              "headline": headline, "results": results, "skipped": skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
