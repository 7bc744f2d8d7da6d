"""The README's headline commands, run as a user runs them: wall time and what they report.

Three commands, each a subprocess of the installed `easc` (the console script next to this Python, so the
figures are those of the code in this tree), in a fresh temporary folder:

1. `easc search --dataset digits --out runs/demo`: the embedded default search (parent start, 3 steps x 10
   children, 4 Net2Wider + 5 Net2Deeper actions, 6 epochs per child).
2. `easc search --space densenet --dataset digits --out runs/dense`: the DenseNet space on digits.
3. `easc train d.onnx --dataset digits`: the `digits-small` start net, freshly built with the Python API
   (`build_start_net("digits-small", (1, 8, 8), 10, seed=0)`, the weights a search starts from) and saved as
   ONNX, trained with the command's defaults (20 epochs).

For each search: wall time of the command, networks trained, failures, start and best validation accuracy,
and the best child's parameters and depth, read back with `easc report RUN --json` (the numbers a user sees).
For the training: wall time and the command's closing JSON line. Also recorded: date, machine, load average
at the start and at the end (wall times on a shared machine move with the load; accuracies do not).

There is no `--quick`: these figures are of the README's exact commands, and a smaller run would be a
different command (the whole script took 3 minutes on 2 shared cores, load average 1.8). `--smoke` shrinks
every command to seconds to check that the script runs; `--skip-densenet` leaves out the longest command.

    python benchmarks/bench_defaults.py                  # the README's commands, a few minutes
    python benchmarks/bench_defaults.py --smoke          # seconds; checks the script works

Prints a table and writes benchmarks/results/bench_defaults.json (each command's output goes to the console,
and `run_all.py` keeps it in bench_defaults.log).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_all beside it, also when loaded by file path
from run_all import load_average, machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_defaults.json"
# --smoke: the same commands, cut to seconds.
SMOKE_SEARCH = ["--steps", "1", "--children", "2", "--epochs", "1"]
SMOKE_TRAIN = ["--epochs", "1"]


def easc_command() -> list:
    """The `easc` a user of this Python runs: its console script, else the module behind it."""
    script = Path(sys.executable).parent / "easc"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from easc.cli.main import main; sys.exit(main())"]


def run(argv: list, cwd: Path) -> dict:
    """Run one `easc` command; its output goes to the console; returns wall seconds and its last line."""
    shown = " ".join(["easc", *argv])
    print(f"$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*easc_command(), *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    proc.wait()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{shown}` failed with exit code {proc.returncode}")
    last = next((line for line in reversed(lines) if line.strip()), "")
    return {"command": shown, "seconds": round(seconds, 2), "last_line": last}


def report(run_dir: str, cwd: Path) -> dict:
    out = subprocess.run([*easc_command(), "report", run_dir, "--json", "--no-plots"], cwd=cwd, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def search(label: str, argv: list, cwd: Path) -> dict:
    result = run(argv, cwd)
    run_dir = argv[argv.index("--out") + 1]
    data = report(run_dir, cwd)
    result.update(label=label, networks=data["children"], failed=data["failed"], parent=data["parent"],
                  steps=len(data["steps"]), start=data["start"], best=data["best"])
    return result


def train(argv: list, cwd: Path) -> dict:
    result = run(argv, cwd)
    result["json"] = json.loads(result["last_line"])  # the command's closing JSON line
    return result


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{int(s // 60)} min {s % 60:.0f} s"


def headline(searches: list, trained: dict) -> list:
    rows = []
    for s in searches:
        rows += [{"metric": f"`{s['command']}`: wall, networks, failed",
                  "value": f"{fmt_seconds(s['seconds'])}, {s['networks']}, {s['failed']}"},
                 {"metric": f"{s['label']}: val acc, start (params, depth) -> best (params, depth)",
                  "value": f"{s['start']['val_acc']:.4f} ({s['start']['params']:,}, {s['start']['depth']}) -> "
                           f"{s['best']['val_acc']:.4f} ({s['best']['params']:,}, {s['best']['depth']})"}]
    j = trained["json"]
    rows.append({"metric": f"`{trained['command']}`: test acc, epochs, seconds (closing line)",
                 "value": f"{j['test_acc']:.4f}, {j['epochs']}, {j['seconds']}"})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="seconds: checks that the script runs")
    p.add_argument("--skip-densenet", action="store_true", help="leave out the DenseNet-space search")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    extra_search = SMOKE_SEARCH if args.smoke else []
    extra_train = SMOKE_TRAIN if args.smoke else []

    info = {**machine_info(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    load_start = info["load_average"]
    print(f"{info['date']}: {info['cores']} cores, {info['cpu']}, torch {info['torch']}; "
          f"load average at start {load_start}", flush=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_defaults_"))
    try:
        searches = [search("default search", ["search", "--dataset", "digits", "--out", "runs/demo", *extra_search],
                           tmp)]
        if not args.skip_densenet:
            searches.append(search("DenseNet space", ["search", "--space", "densenet", "--dataset", "digits",
                                                      "--out", "runs/dense", *extra_search], tmp))
        from easc.backends.onnx import save_onnx
        from easc.search.start_nets import build_start_net

        # The net a default search starts from, before any training (seed 0, as the search builds it).
        save_onnx(build_start_net("digits-small", (1, 8, 8), 10, seed=0), tmp / "d.onnx")
        trained = train(["train", "d.onnx", "--dataset", "digits", *extra_train], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    load_end = load_average()

    rows = headline(searches, trained)
    print()
    print(f"README commands ({'smoke' if args.smoke else 'as written'}), {info['date']}, load average at start "
          f"{load_start}, at end {load_end}; {fmt_seconds(total)} in all")
    width = max(len(r["metric"]) for r in rows)
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']}")

    result = {"benchmark": "bench_defaults", "mode": "smoke" if args.smoke else "full", "machine": info,
              "load_average_start": load_start, "load_average_end": load_end, "seconds": round(total, 1),
              "headline": rows, "searches": searches, "train": trained}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
