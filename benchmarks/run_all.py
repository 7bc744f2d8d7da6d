"""Run every benchmark, one after another, and write one combined table.

    python benchmarks/run_all.py --quick      # all of them at a small size: under 20 minutes on 2 CPU cores
    python benchmarks/run_all.py              # the scripts' default sizes: much longer
    python benchmarks/run_all.py --only bench_reuse,bench_executors

Each benchmark is its own script, run in its own process (so one's threads, workers or Ray instance do not
leak into the next) with its quick flag: `--quick` where the script has one, otherwise the small settings
listed in QUICK_ARGS. A script that is missing is skipped with a message; one that fails is reported and
the others still run. Each writes benchmarks/results/<name>.json; its output goes to the console and to
benchmarks/results/<name>.log.

Writes benchmarks/results/summary.json and summary.md (a markdown table for the README), headed by the
date and the machine: cores, CPU model (/proc/cpuinfo), load average at the start, torch and Python versions.
The figures of a shared or busy machine are noisy; run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# In the order they run: the cheap, timing-sensitive ones first.
BENCHMARKS = ("bench_backend", "bench_passes", "bench_data", "bench_driver", "bench_transform", "bench_executors",
              "bench_search", "bench_defaults", "bench_reuse", "bench_rl_vs_random")
# For scripts without a --quick flag: arguments that make them quick.
QUICK_ARGS = {"bench_backend": ["--repeats", "5", "--steps", "10", "--threads", "1"],
              "bench_search": ["--repeats", "2"], "bench_transform": ["--repeats", "1"],
              "bench_driver": ["--children", "4"]}
DESCRIPTIONS = {
    "bench_backend": "generated module vs hand-written PyTorch, training images/s",
    "bench_data": "image folder decoding: easc's parallel cached loader vs a plain Pillow loop",
    "bench_passes": "pass + verification cost against depth, error distribution",
    "bench_executors": "children per minute: in-process, 1 and 2 worker processes, Ray",
    "bench_search": "search wall time, 1 vs 2 workers",
    "bench_defaults": "the README's search and train commands as written: wall time, accuracies",
    "bench_transform": "easc transform on ResNet-18/50, DenseNet-121, VGG-11-BN against its floor",
    "bench_driver": "search driver seconds per child at paper scale, local vs whole-graph check",
    "bench_reuse": "weight reuse vs training from scratch",
    "bench_rl_vs_random": "RL controller vs random search at equal budget",
}


def load_average():
    """[1, 5, 15 min] load averages, None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version, cuda = None, None
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cores": os.cpu_count(),
            "cpu": cpu, "load_average": load_average(), "torch": torch_version, "cuda_device": cuda,
            "python": platform.python_version(), "platform": platform.platform()}


_HELP: dict = {}


def has_flag(script: Path, flag: str) -> bool:
    """Whether `script --help` lists `flag` (each script is asked, not assumed)."""
    if script not in _HELP:
        try:
            out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                 timeout=120)
            _HELP[script] = out.stdout if out.returncode == 0 else ""
        except subprocess.TimeoutExpired:
            _HELP[script] = ""
    return flag in _HELP[script].split()  # "--quick" but not "--quick-x"


def arguments(name: str, script: Path, mode: str, result_path: Path) -> list:
    args = []
    if mode != "full":
        if has_flag(script, f"--{mode}"):
            args.append(f"--{mode}")
        elif mode == "smoke" and has_flag(script, "--quick"):
            args.append("--quick")
        else:
            args += QUICK_ARGS.get(name, [])
    if result_path != RESULTS / f"{name}.json":
        if not has_flag(script, "--out"):
            raise ValueError(f"{script.name} has no --out flag, so its results cannot go elsewhere")
        args += ["--out", str(result_path)]
    return args


def run_one(name: str, mode: str, timeout: float | None, results: Path = RESULTS) -> dict:
    script = HERE / f"{name}.py"
    entry = {"name": name, "description": DESCRIPTIONS.get(name, ""), "status": "skipped", "seconds": 0.0,
             "args": [], "headline": []}
    if not script.exists():
        entry["message"] = f"{script.name} not found"
        print(f"== {name}: skipped, {entry['message']}", flush=True)
        return entry
    result_path = results / f"{name}.json"
    log_path = results / f"{name}.log"
    try:
        args = arguments(name, script, mode, result_path)
    except ValueError as e:
        entry.update(status="failed", message=str(e))
        print(f"== {name}: failed, {e}", flush=True)
        return entry
    entry["args"] = args
    print(f"== {name} {' '.join(args)}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    started = time.time()
    timed_out = threading.Event()
    with open(log_path, "w") as log:
        # Its own process group, so that a timeout also ends the workers it spawned (pools, Ray).
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=HERE.parent, start_new_session=True)

        def stop():
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, stop) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
    entry["seconds"] = round(time.time() - started, 1)
    if timed_out.is_set():
        entry.update(status="failed", message=f"stopped after the --timeout of {timeout:.0f} s")
    elif proc.returncode != 0:
        entry.update(status="failed", message=f"exit code {proc.returncode}; see {log_path}")
    elif not result_path.exists() or result_path.stat().st_mtime < started:
        entry.update(status="failed", message=f"wrote no fresh {result_path.name}")
    else:
        entry["status"] = "ok"
    if entry["status"] == "ok":
        try:
            entry["headline"] = headline(name, json.loads(result_path.read_text()))
            entry["result"] = str(result_path)
        except (ValueError, KeyError, TypeError) as e:
            entry.update(status="failed", message=f"{result_path.name}: unreadable ({type(e).__name__}: {e})")
    print(f"== {name}: {entry['status']} in {entry['seconds']:.0f} s"
          + (f" ({entry['message']})" if entry.get("message") else ""), flush=True)
    return entry


def _backend_rows(data: dict) -> list:
    return [{"metric": f"to_module / nn.Sequential training throughput (paired ratio), {'x'.join(map(str, r['input']))}",
             "value": f"{r['paired_ratio']:.3f} ({r['images_per_s']['to_module']:,.0f} vs "
                      f"{r['images_per_s']['nn.Sequential']:,.0f} img/s)"} for r in data["results"]]


def _passes_rows(data: dict) -> list:
    deepest = max(r["depth"] for r in data["depth"])
    rows = [r for r in data["depth"] if r["depth"] == deepest]
    names = "/".join(r["pass"] for r in rows)
    err = data["error"]
    return [
        {"metric": f"pass + verify + interpreter check at depth {deepest}, ms ({names})",
         "value": " / ".join(f"{r['pass_ms'] + r['verify_ms'] + r['interp_ms']:.1f}" for r in rows)},
        {"metric": f"pass + verify + onnxruntime check at depth {deepest}, ms ({names})",
         "value": " / ".join(f"{r['pass_ms'] + r['verify_ms'] + r['ort_ms']:.1f}" for r in rows)},
        {"metric": f"preservation error (onnxruntime), median / p99 / max, {err['applications']} random applications",
         "value": f"{err['ort']['median']:.1e} / {err['ort']['p99']:.1e} / {err['ort']['max']:.1e}"},
        {"metric": f"applications over the tolerance {err['tolerance']:g} (interpreter / onnxruntime)",
         "value": f"{err['over_tolerance']['interp']} / {err['over_tolerance']['ort']}"},
    ]


def _search_rows(data: dict) -> list:
    m = data["median"]
    return [{"metric": "search children/min, 1 / 2 workers",
             "value": f"{m['1']['children_per_min']:.1f} / {m['2']['children_per_min']:.1f} "
                      f"(ratio {data['ratio']:.2f}, paired {data['paired_ratio']:.2f})"},
            {"metric": "search wall s, 1 / 2 workers",
             "value": f"{m['1']['wall_seconds']:.1f} / {m['2']['wall_seconds']:.1f}"},
            {"metric": "all workers busy, share of a step (2 workers)", "value": f"{data['all_busy_2_workers']:.2f}"},
            {"metric": "same search under both executors", "value": str(data["same_runs"])}]


SUMMARISERS = {"bench_backend": _backend_rows, "bench_passes": _passes_rows, "bench_search": _search_rows}


def headline(name: str, data: dict) -> list:
    """A few rows {metric, value} that sum up one benchmark's JSON."""
    if isinstance(data.get("headline"), list):
        return [{"metric": str(r["metric"]), "value": str(r["value"])} for r in data["headline"]]
    if name in SUMMARISERS:
        try:
            return SUMMARISERS[name](data)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # the script's JSON changed shape: fall back to its top-level figures
    # Anything else: its top-level figures.
    skip = {"benchmark", "torch", "python", "machine", "device", "mode", "threads"}
    rows = []
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, float):
            rows.append({"metric": key, "value": f"{value:.4g}"})
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            rows.append({"metric": key, "value": str(value)})
    return rows[:8] or [{"metric": "result", "value": "see JSON"}]


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"Benchmarks ({summary['mode']}), {m['date']}: {m['cores']} cores, {m['cpu']}, torch {m['torch']}, "
             f"Python {m['python']}" + (f", GPU {m['cuda_device']}" if m.get("cuda_device") else "")
             + (f"; load average at start {m['load_average'][0]}" if m.get("load_average") else "")
             + f"; {summary['seconds'] / 60:.1f} min in all.", "",
             "| benchmark | metric | value |", "|---|---|---|"]
    for e in summary["benchmarks"]:
        if e["status"] != "ok":
            lines.append(f"| {e['name']} | {e['status']} | {e.get('message', '')} |")
            continue
        for i, row in enumerate(e["headline"]):
            cell = e["name"] if i == 0 else ""
            lines.append(f"| {cell} | {row['metric'].replace('|', '/')} | {row['value'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def print_table(summary: dict) -> None:
    print("\n" + markdown(summary).splitlines()[0] + "\n")
    width = max([len(r["metric"]) for e in summary["benchmarks"] for r in e["headline"]] + [20])
    print(f"{'benchmark':<20} {'metric':<{width}}  value")
    print("-" * (width + 50))
    for e in summary["benchmarks"]:
        if e["status"] != "ok":
            print(f"{e['name']:<20} {e['status'] + ': ' + e.get('message', ''):<{width}}")
            continue
        for i, row in enumerate(e["headline"]):
            print(f"{e['name'] if i == 0 else '':<20} {row['metric']:<{width}}  {row['value']}")


def write_summary(summary: dict, results: Path = RESULTS) -> tuple:
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / "summary.json", results / "summary.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(markdown(summary))
    return json_path, md_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes: under 20 minutes on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="each script's smoke mode where it has one")
    p.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder for the JSON, logs and summary [default: benchmarks/results]")
    args = p.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip().removesuffix(".py") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if not (HERE / f"{n}.py").exists() and n not in BENCHMARKS]
        if unknown:
            p.error(f"--only: unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    t0 = time.time()
    entries = [run_one(name, mode_name, args.timeout, results) for name in names]
    summary = {"mode": mode_name, "machine": machine, "seconds": round(time.time() - t0, 1), "benchmarks": entries}
    print_table(summary)
    json_path, md_path = write_summary(summary, results)
    print(f"\nwrote {json_path} and {md_path}")
    return 0 if all(e["status"] != "failed" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
