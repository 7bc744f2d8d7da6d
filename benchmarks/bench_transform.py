"""`easc transform` on real-size networks against its floor (issue 9).

Standard layouts, built in plain PyTorch by `easc.backends.torch.zoo` (no downloads, random weights), exported
to ONNX by torch at 1x3x64x64 (batch dimension symbolic). On each:

    widen    `easc transform MODEL --widen -o OUT`           every widenable layer x2
    deepen   `easc transform MODEL --deepen A ... -o OUT`    a chain of 10 deepens (relus spread over the net)
    skip     `easc transform MODEL --skip S:D ... -o OUT`    a chain of 10 skips (pairs spread over the net)

each run as a user runs it, the installed command in its own process (easc's modules compiled to bytecode
first, as an installed package has them: `compile_package`): wall time, and peak RSS (the child's ru_maxrss
from wait4). In the same run, right after, the floor on the same files, also in its own process
(interpreter start and imports included, as in the command):

    load      onnx.load of the input file
    save      onnx.save of a model of the output's size (the command's own output, loaded untimed)
    sessions  one onnxruntime session on the input and one on the output
    probes    four probe runs (4 samples each): two on each session

Printed per layout and chain: wall / floor and peak RSS / output bytes (the issue's targets: at most 2x and
at most 3x); the least wall / floor any process could reach, (start-up + floor) / floor, where start-up is
the wall time of a process that only imports numpy, onnx and onnxruntime (as the floor process does before
its timed part); also (peak RSS - process baseline) / output bytes, where the process baseline is the peak RSS of
a process that only imports what the command imports (measured once per run; the raw ratio stays the
target), the floor's parts, and the process floor (the floor process's own wall time and peak RSS). Medians over
`--repeats`, the command and its floor alternating.

    python benchmarks/bench_transform.py [--models resnet18,resnet50,...] [--repeats 3] [--smoke]

The model list is `MODELS` below: a name of `easc.backends.torch.zoo.ARCHITECTURES` (plus, optionally, the
input size). `--smoke` runs resnet18's widen at 1x3x32x32, once, for the test suite. Writes
benchmarks/results/bench_transform.json and .log; a run of some of the models replaces their rows and keeps the
others' (the .log gets the new lines appended).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {  # name in easc.backends.torch.zoo.ARCHITECTURES -> input sample shape; add a line to add a row
    "resnet18": (3, 64, 64),
    "resnet50": (3, 64, 64),
    "densenet121": (3, 64, 64),
    "vgg11_bn": (3, 64, 64),
    "mobilenet_v2": (3, 64, 64),  # ReLU6 (clip), depthwise convs, inverted residuals
    "efficientnet_b0": (3, 64, 64),  # SiLU, squeeze-excitation gates, depthwise convs
}
ACTIVATIONS = ("relu", "clip", "silu", "hardswish")  # deepen after / skip from these (ReLU6 and SiLU nets too)
CHAIN = 10
TARGET_WALL, TARGET_RSS = 2.0, 3.0

FLOOR = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, onnx, onnxruntime as ort
imports = time.perf_counter() - t0
source, output, scratch = sys.argv[1:4]
def session(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL; o.log_severity_level = 3
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
t = time.perf_counter(); onnx.load(source); load = time.perf_counter() - t
big = onnx.load(output)
t = time.perf_counter(); onnx.save(big, scratch); save = time.perf_counter() - t
del big
t = time.perf_counter(); a, b = session(source), session(output); sessions = time.perf_counter() - t
i = a.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([4] + list(i.shape[1:])).astype(np.float32)
t = time.perf_counter()
for s in (a, b, a, b):
    s.run(None, {i.name: x})
probes = time.perf_counter() - t
print(json.dumps(dict(imports=imports, load=load, save=save, sessions=sessions, probes=probes)))
"""


BASELINE = r"""
# what `easc transform` has imported when it starts reading the model: its peak RSS is the process baseline
import easc.cli.main, easc.cli.transform_cmd
from easc.backends.formats import check_save_path, load_model
from easc.backends.onnx import run_onnx
from easc.backends.onnx.exporter import export_parts
from easc.backends.onnx.stream import write_model
from easc.passes.manager import PassManager
from easc.passes.pipeline import iter_widen_all
import onnxruntime
"""


def _measured(cmd: list, env: dict | None = None) -> tuple:
    """(wall seconds, peak RSS bytes, stdout): the child's own peak RSS, via a wrapper that wait4s it (`env`: the
    environment of both, default this process's)."""
    wrapper = ("import os, subprocess, sys, time, json\n"
               "t = time.perf_counter(); p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, "
               "stderr=subprocess.PIPE)\n"
               "out, err = p.communicate(); wall = time.perf_counter() - t\n"
               "import resource; rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
               "print(json.dumps(dict(wall=wall, rss=rss, code=p.returncode, out=out.decode()[-4000:], "
               "err=err.decode()[-2000:])))\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], capture_output=True, text=True, env=env)
    report = json.loads(proc.stdout)
    if report["code"]:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({report['code']}): {report['err'].strip()}")
    return report["wall"], report["rss"], report["out"]


def _export(name: str, shape: tuple, path: Path) -> int:
    """Build layout `name` (seeded random weights), calibrate its batchnorms, export it to `path` by torch.

    The batchnorms' running statistics are measured on 32 random inputs (in train mode, averaged over the
    batches), as a trained model's are measured on its data: with the fresh ones (mean 0, variance 1) the signal
    of a deep random net dies out on the way, MobileNetV2's and EfficientNet-B0's logits were the same for every
    input, and the end-to-end check of `easc transform` compared constants."""
    import torch

    from easc.backends.torch import zoo

    torch.manual_seed(0)
    model = zoo.ARCHITECTURES[name]()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape))
    model.eval()
    x = torch.randn(1, *shape)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
    return sum(p.numel() for p in model.parameters())


def _spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _chains(path: Path) -> dict:
    """The command-line arguments of each chain on the model at `path` (names from its own IR)."""
    from easc.backends.formats import load_model
    from easc.passes.pipeline import registry

    graph = load_model(path)
    passes = registry()
    relus = [c["after"] for c in passes["deepen"].candidates(graph) if graph.node(c["after"]).op in ACTIVATIONS]
    deepen = []
    for after in _spread(relus, CHAIN):
        deepen += ["--deepen", after]
    # skips: one per destination layer, sources spread over the net, same spatial size preferred (no pool)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    pairs, used = [], set()
    layers = [n for n in graph.layers() if n.op == "conv2d"]
    for dst in _spread(layers[1:], CHAIN * 2):
        if len(pairs) == CHAIN or dst.name in used:
            continue
        for src in reversed(graph.nodes[:order[dst.name] - 1]):
            if src.op in ACTIVATIONS and passes["skip"].reason(graph, src=src.name, dst=dst.name) is None:
                pairs.append(f"{src.name}:{dst.name}")
                used.add(dst.name)
                break
    skip = [a for p in pairs for a in ("--skip", p)]
    return {"widen": ["--widen"], "deepen": deepen, "skip": skip}


def _floor(source: Path, output: Path, scratch: Path) -> dict:
    wall, rss, out = _measured([sys.executable, "-c", FLOOR, source, output, scratch])
    parts = json.loads(out.strip().splitlines()[-1])
    parts["total"] = parts["load"] + parts["save"] + parts["sessions"] + parts["probes"]
    parts["process"] = wall
    parts["rss"] = rss
    return parts


STARTUP = "import numpy, onnx, onnxruntime"
"""What the floor process imports before its timed operations: no process that reads and writes ONNX and
runs onnxruntime can start faster, so (its wall + in-process floor) / in-process floor is the least wall /
floor ratio any such command can reach on a row."""


def startup_seconds(repeats: int) -> float:
    """Median wall time of a process that starts the interpreter and imports numpy, onnx and onnxruntime."""
    return statistics.median(_measured([sys.executable, "-c", STARTUP])[0] for _ in range(max(3, repeats)))


def baseline_rss(repeats: int) -> float:
    """Median peak RSS of a process that imports what `easc transform` imports, and nothing more."""
    return statistics.median(_measured([sys.executable, "-c", BASELINE])[1] for _ in range(max(1, repeats)))


def compile_package() -> int:
    """Compile easc's modules to bytecode before timing the command, as an installed package has them; returns
    how many source files there are.

    pip byte-compiles a package when it installs it, and Python writes the bytecode of an editable install on
    first import, unless PYTHONDONTWRITEBYTECODE is set, as it is on this project's machines. Then every run of
    the command compiled each easc module it imports again (measured: 0.93 s with the bytecode, 1.05 s without,
    ResNet-18 skips), a cost no installed copy pays and the floor process never sees (it imports only
    site-packages, which have their bytecode)."""
    import compileall
    import importlib.util

    folders = set()
    for package in ("easc", "easc.ir", "easc.passes", "easc.backends", "easc.search", "easc.cli"):
        spec = importlib.util.find_spec(package)  # the folders without importing them (easc's are mapped)
        folders.update(spec.submodule_search_locations or ())
    for folder in sorted(folders):
        compileall.compile_dir(folder, quiet=1)
    return sum(1 for folder in folders for _ in Path(folder).rglob("*.py"))


def bench(models: list, repeats: int, shape_override=None, log=print, chains_wanted=None) -> list:
    easc = [sys.executable, "-m", "easc.cli.main", "transform"]
    rows = []
    log(f"bytecode: {compile_package()} easc source files compiled before timing (as installed)")
    baseline = baseline_rss(repeats)
    log(f"process baseline: peak RSS {baseline / 1e6:.1f} MB after the command's imports, before any model")
    startup = startup_seconds(repeats)
    log(f"start-up: {startup:.2f} s for a process to start and import numpy, onnx and onnxruntime (median)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models:
            shape = shape_override or MODELS.get(name, (3, 64, 64))
            source = tmp / f"{name}.onnx"
            params = _export(name, shape, source)
            chains = _chains(source)
            for chain, args in chains.items():
                if chains_wanted is not None and chain not in chains_wanted:
                    continue
                output = tmp / f"{name}_{chain}.onnx"
                walls, rsss, floors = [], [], []
                for _ in range(repeats):
                    wall, rss, _ = _measured(easc + [source, *args, "-o", output])
                    walls.append(wall)
                    rsss.append(rss)
                    floors.append(_floor(source, output, tmp / "scratch.onnx"))
                out_bytes = output.stat().st_size
                floor = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
                row = dict(model=name, input=list(shape), params=params, chain=chain,
                           passes=len([a for a in args if a.startswith("--")]) if chain != "widen" else "all",
                           input_bytes=source.stat().st_size, output_bytes=out_bytes,
                           wall=statistics.median(walls), walls=walls, peak_rss=statistics.median(rsss),
                           floor=floor)
                row["wall_over_floor"] = row["wall"] / floor["total"]
                row["wall_over_process_floor"] = row["wall"] / floor["process"]
                row["startup"] = startup
                row["least_wall_over_floor"] = (startup + floor["total"]) / floor["total"]
                row["rss_over_output"] = row["peak_rss"] / out_bytes
                row["baseline_rss"] = baseline
                row["rss_above_baseline_over_output"] = (row["peak_rss"] - baseline) / out_bytes
                row["rss_over_floor_process"] = row["peak_rss"] / floor["rss"]
                rows.append(row)
                log(_line(row))
    return rows


def _line(r: dict) -> str:
    f = r["floor"]
    return (f"{r['model']:<12} {r['chain']:<7} out {r['output_bytes'] / 1e6:7.1f} MB  wall {r['wall']:6.2f} s  "
            f"floor {f['total']:5.2f} s (load {f['load']:.2f}, save {f['save']:.2f}, sessions {f['sessions']:.2f}, "
            f"probes {f['probes']:.2f}; process {f['process']:.2f})  wall/floor {r['wall_over_floor']:4.2f} "
            f"(least possible {r['least_wall_over_floor']:4.2f})  "
            f"wall/process floor {r['wall_over_process_floor']:4.2f}  peak RSS {r['peak_rss'] / 1e6:7.1f} MB  "
            f"RSS/output {r['rss_over_output']:4.2f}  (RSS-baseline)/output {r['rss_above_baseline_over_output']:4.2f}  "
            f"RSS/floor process RSS {r['rss_over_floor_process']:4.2f}")


def _span(values) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def conclusion(rows: list, baseline: float) -> list:
    """Which target each row meets against which floor, and why the others are not met (printed and logged)."""
    if not rows:
        return []
    n = len(rows)
    name = lambda r: f"{r['model']} {r['chain']}"  # noqa: E731
    proc = [r for r in rows if r["wall_over_process_floor"] <= TARGET_WALL]
    inproc = [r for r in rows if r["wall_over_floor"] <= TARGET_WALL]
    rss = [r for r in rows if r["rss_over_output"] <= TARGET_RSS]
    lines = [f"conclusion: wall <= {TARGET_WALL:g}x the process floor (interpreter start and imports on both sides): "
             f"met on {len(proc)} of {n} rows"
             + ("" if len(proc) == n else "; not met: " + ", ".join(
                 f"{name(r)} {r['wall_over_process_floor']:.2f}" for r in rows if r not in proc))]
    missed = [r for r in rows if r not in inproc]
    line = (f"conclusion: wall <= {TARGET_WALL:g}x the in-process floor (load, save, sessions, probes only): met on "
            f"{len(inproc)} of {n} rows" + (f" ({', '.join(name(r) for r in inproc)})" if inproc else ""))
    if missed:
        starts = [r["floor"]["process"] - r["floor"]["total"] for r in missed]
        imports = [r["floor"]["imports"] for r in missed]
        line += (f"; not met on {len(missed)}: the floor process spends {min(starts):.2f}-{max(starts):.2f} s outside "
                 f"its timed operations (interpreter start and imports, `import onnx` alone "
                 f"{min(imports):.2f}-{max(imports):.2f} s, plus its untimed load of the output it saves), which a "
                 f"process of the command pays too (but for that load) and the in-process floor leaves out; "
                 f"against in-process floors of {min(r['floor']['total'] for r in missed):.2f}-"
                 f"{max(r['floor']['total'] for r in missed):.2f} s that start alone is "
                 f"{min(s_ / r['floor']['total'] for s_, r in zip(starts, missed)):.1f}-"
                 f"{max(s_ / r['floor']['total'] for s_, r in zip(starts, missed)):.1f}x of them; the command's "
                 f"wall less that start is " + ", ".join(
                     f"{name(r)} {(r['wall'] - s_) / r['floor']['total']:.2f}x" for s_, r in zip(starts, missed))
                 + " the in-process floor")
    lines.append(line)
    if missed:
        bound = [r for r in missed if r["least_wall_over_floor"] > TARGET_WALL]
        own = [r for r in missed if r not in bound]
        lines.append(
            f"conclusion: of the {len(missed)} rows over {TARGET_WALL:g}x the in-process floor, {len(bound)} cannot be "
            f"met by any process: starting and importing numpy, onnx and onnxruntime alone "
            f"({_span(r['startup'] for r in rows)} s) added to their floors exceeds {TARGET_WALL:g}x them"
            + (" (" + ", ".join(f"{name(r)}: least {r['least_wall_over_floor']:.2f}" for r in bound) + ")" if bound
               else "")
            + (f"; {len(own)} miss by the command's own work: " + ", ".join(
                f"{name(r)} {r['wall_over_floor']:.2f} (least {r['least_wall_over_floor']:.2f})" for r in own)
               if own else "; none misses by the command's own work"))
    line = (f"conclusion: peak RSS <= {TARGET_RSS:g}x the output: met on {len(rss)} of {n} rows")
    over = [r for r in rows if r not in rss]
    if over:
        shown = ", ".join(f"{name(r)} {r['rss_over_output']:.2f}" for r in over)
        line += (f"; not met on {len(over)} ({shown}): "
                 f"their outputs are {min(r['output_bytes'] for r in over) / 1e6:.0f}-"
                 f"{max(r['output_bytes'] for r in over) / 1e6:.0f} MB, and a process that has only imported what the "
                 f"command imports already holds {baseline / 1e6:.0f} MB "
                 f"({min(baseline / r['output_bytes'] for r in over):.1f}-"
                 f"{max(baseline / r['output_bytes'] for r in over):.1f}x of them); above that baseline they use "
                 f"{min(r['rss_above_baseline_over_output'] for r in over):.2f}-"
                 f"{max(r['rss_above_baseline_over_output'] for r in over):.2f}x the output, and the floor process "
                 f"itself (load, save, two sessions) peaks at "
                 f"{min(r['floor']['rss'] / r['output_bytes'] for r in over):.1f}-"
                 f"{max(r['floor']['rss'] / r['output_bytes'] for r in over):.1f}x the output; the command's peak is "
                 f"{min(r['rss_over_floor_process'] for r in over):.2f}-"
                 f"{max(r['rss_over_floor_process'] for r in over):.2f}x the floor process's")
    lines.append(line)
    return lines


def run_header(benchmark: str, repeats: int) -> str:
    """A run's first log line: the benchmark, the machine, its load, Python, the repeats and the time (UTC)."""
    return (f"{benchmark}: {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, python "
            f"{platform.python_version()}, repeats {repeats}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def report_head(benchmark: str, smoke: bool, command: str) -> dict:
    """The fields a result file begins with: what ran, how, when and on how loaded a machine."""
    return {"benchmark": benchmark, "mode": "smoke" if smoke else "full", "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0]}


def write_results(out, report: dict, lines: list) -> None:
    """A run's result file (`out`, JSON) and its log (`out` with .log): what every benchmark here writes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".log").write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=None,
                        help="input N x N for every layout (default: each layout's, 64); e.g. 224 for ImageNet's")
    parser.add_argument("--chains", default="widen,deepen,skip")
    parser.add_argument("--smoke", action="store_true", help="resnet18 --widen at 3x32x32, once (for the tests)")
    parser.add_argument("--out", default=str(RESULTS / "bench_transform.json"))
    args = parser.parse_args(argv)
    models = ["resnet18"] if args.smoke else [m for m in args.models.split(",") if m]
    repeats = 1 if args.smoke else args.repeats
    out = Path(args.out)
    lines = []

    def log(line):
        print(line, flush=True)
        lines.append(line)

    log(run_header("bench_transform", repeats))
    chains = ("widen",) if args.smoke else tuple(c for c in args.chains.split(",") if c)
    command = "python benchmarks/bench_transform.py" + (" --smoke" if args.smoke else
                                                          f" --models {','.join(models)} --repeats {repeats}"
                                                          + (f" --size {args.size}" if args.size else "")
                                                          + (f" --chains {args.chains}"
                                                             if chains != ("widen", "deepen", "skip") else ""))
    partial = args.size or chains != ("widen", "deepen", "skip")
    if not args.smoke and args.out == parser.get_default("out") and partial:
        parser.error("--size or --chains: give --out too (the default file holds the 64x64 rows of every chain)")
    log(f"command: {command}")
    shape = (3, 32, 32) if args.smoke else ((3, args.size, args.size) if args.size else None)
    rows = bench(models, repeats, shape, log, chains)
    concluded = conclusion(rows, rows[0]["baseline_rss"] if rows else 0.0)
    for line in concluded:
        log(line)
    headline = []
    for r in rows:
        key = f"{r['model']} {r['chain']}"
        headline.append({"metric": f"{key}: wall / floor (target <= {TARGET_WALL:g})",
                         "value": round(r["wall_over_floor"], 2)})
        headline.append({"metric": f"{key}: peak RSS / output bytes (target <= {TARGET_RSS:g})",
                         "value": round(r["rss_over_output"], 2)})
        headline.append({"metric": f"{key}: least possible wall / floor (start-up + floor)",
                         "value": round(r["least_wall_over_floor"], 2)})
        headline.append({"metric": f"{key}: (peak RSS - process baseline) / output bytes",
                         "value": round(r["rss_above_baseline_over_output"], 2)})
    report = {**report_head("bench_transform", args.smoke, command), "rows": rows, "headline": headline,
              "conclusion": concluded}
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.smoke and out.exists():  # a run of some models keeps the other models' rows of an earlier run
        earlier = json.loads(out.read_text())
        if earlier.get("mode") == "full":
            kept = [r for r in earlier.get("rows", []) if r["model"] not in models]
            report["rows"] = kept + rows
            report["headline"] = [h for h in earlier.get("headline", [])
                                  if h["metric"].split(" ")[0] not in models] + headline
            report["earlier_runs"] = earlier.get("earlier_runs", []) + [
                {k: earlier.get(k) for k in ("command", "date", "load_average")}]
            lines = [out.with_suffix(".log").read_text().rstrip("\n")] + lines if out.with_suffix(".log").exists() \
                else lines
            if kept:  # the conclusion over every row the file now holds, the kept ones with their own runs' figures
                report["conclusion_this_run"] = concluded
                report["conclusion"] = conclusion(report["rows"], rows[0]["baseline_rss"] if rows else 0.0)
                lines.append(f"over all {len(report['rows'])} rows of {out.name} (this run's and the kept ones):")
                for line in report["conclusion"]:
                    print(line, flush=True)
                    lines.append(line)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".log").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
