"""What a verified pass costs, and how close to the tolerance its verification comes (issue 2).

1. Cost against depth. Plain conv nets of 10, 50 and 200 [conv 3x3 -> batchnorm -> relu] layers (8
   channels on 3x8x8 inputs, so the numpy interpreter stays cheap), global average pooling, fc-10. On each,
   one application of every pass at the middle of the net:

       widen         conv_{L/2}: 8 -> 16 channels
       deepen        an identity conv 3x3 -> bn -> relu after relu_{L/2}
       skip          relu_{L/4} concatenated onto conv_{3L/4}'s input
       widen_kernel  conv_{L/2}: 3x3 -> 5x5

   and, separately timed, what verifying it costs: the structural verifier (`verify` plus the signature
   check), the numeric check with the reference interpreter (float64 numpy; the library's default), and
   the numeric check with onnxruntime (the CLI's oracle: export both graphs, build two sessions, run).
   The numeric checks run both the graph before and after the pass on PROBE_BATCH seeded inputs.
   Figures are medians over repeats, in milliseconds.

2. Verification error. Over many random pass applications (default 1000) the relative error that the check
   compares with the tolerance,

       max |f_after(x) - f_before(x)| / (1 + max |f_before(x)|)      vs   PRESERVATION_RTOL = 1e-5,

   measured with both executors. Random graphs come from the test suite's generator (tests/strategies.py,
   `random_graph`: the same draws as the hypothesis strategy, from a numpy generator so the run is a plain
   loop). On each graph a chain of up to CHAIN random passes with random valid arguments is
   applied; each application is measured against its own input graph. Arguments that a pass refuses
   (PassError) are redrawn and counted. Reported: median, p99, max per executor and per pass, and how many
   applications exceeded the tolerance (should be none).

    python benchmarks/bench_passes.py [--quick] [--repeats 7] [--applications 1000] [--seed 0]

`--quick` runs 3 repeats and 100 applications (about a minute on a shared machine). Prints tables and
writes benchmarks/results/bench_passes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after OMP_NUM_THREADS, which numpy's BLAS reads at import)

from easc.backends.onnx import run_onnx  # noqa: E402
from easc.ir.builder import randomise_weights  # noqa: E402
from easc.ir import Graph, GraphBuilder, probe_inputs, run, verify  # noqa: E402
from easc.passes.base import (PRESERVATION_RTOL, PROBE_BATCH, PassError, ProbeSet, max_output_difference,  # noqa: E402
                              signature)
from easc.passes.deepen import deepen, deepenable  # noqa: E402
from easc.passes.skip import skip, skip_candidates  # noqa: E402
from easc.passes.widen import widen, widenable_layers  # noqa: E402
from easc.passes.widen_kernel import kernel_widenable, widen_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from strategies import random_graph  # noqa: E402  (the test suite's one random-graph generator)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_passes.json"
DEPTHS = (10, 50, 200)
WIDTH = 8
INPUT = (3, 8, 8)
CLASSES = 10
PASSES = ("widen", "deepen", "skip", "widen_kernel")
CHAIN = 5
"""Passes applied one after another to each random graph (later ones act on already-rewritten graphs)."""
MAX_KERNEL = 7
"""Largest kernel widen_kernel grows to in the random runs: larger ones only slow the interpreter down."""
MAX_TRIES = 50
"""Argument draws per application before a graph is given up (none of the four passes applies)."""


# -- 1. cost against depth -------------------------------------------------------------------
def plain_net(depth: int, seed: int = 0) -> Graph:
    """`depth` x [conv 3x3 (WIDTH) -> bn -> relu], global average pooling, fc-CLASSES; He-normal weights."""
    b = GraphBuilder(f"plain_{depth}", rng=np.random.default_rng(seed))
    h = b.input("x", INPUT)
    for _ in range(depth):
        h = b.relu(b.batchnorm(b.conv2d(h, WIDTH, 3, padding=1)))
    b.output("logits", b.linear(b.flatten(b.global_avgpool(h)), CLASSES))
    return b.build()


def depth_cases(depth: int) -> dict:
    """Each pass's arguments at the middle of a plain net of `depth` layers."""
    mid, quarter, three_quarters = depth // 2, max(1, depth // 4), max(2, 3 * depth // 4)
    return {
        "widen": (widen, dict(layer=f"conv_{mid}", width=2 * WIDTH)),
        "deepen": (deepen, dict(after=f"relu_{mid}", kernel=3)),
        "skip": (skip, dict(src=f"relu_{quarter}", dst=f"conv_{three_quarters}")),
        "widen_kernel": (widen_kernel, dict(layer=f"conv_{mid}", kernel=5)),
    }


def _ms(fn) -> tuple:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1e3, value


def _structure(before: Graph, after: Graph) -> None:
    verify(after)
    if signature(before) != signature(after):
        raise AssertionError("signature changed")


TRAIN_IMAGES = 1078  # digits' training split: one epoch of child training in the embedded default search


def epoch_ms(graph: Graph) -> float:
    """Milliseconds of one training epoch of `graph` (batch 64, SGD) on TRAIN_IMAGES synthetic images of INPUT."""
    from easc.backends.torch import to_module
    from easc.backends.torch.data import load_dataset
    from easc.backends.torch.train import TrainConfig, train_module

    data = load_dataset("synthetic", shape=INPUT, num_classes=CLASSES, n=TRAIN_IMAGES * 10 // 6)
    config = TrainConfig(epochs=1, quiet=True)
    train_module(to_module(graph), data, config, evaluate_test=False)  # warm-up: first call pays set-up
    times = [_ms(lambda: train_module(to_module(graph), data, config, evaluate_test=False))[0] for _ in range(3)]
    return statistics.median(times)


CIFAR_TRAIN_IMAGES = 45000  # CIFAR-10's 50,000 training images less the 5,000 held out for the reward


def cifar_scale_share(repeats: int) -> dict:
    """The same share at CIFAR-10 scale: the paper's start net (eas-paper, 3x32x32), one search action's
    pass + verifier + interpreter check (2 probes, as the search runs it) against one real epoch of
    training on 45,000 synthetic 3x32x32 images (one timed epoch: it takes about a minute on one core)."""
    from easc.backends.torch import to_module
    from easc.backends.torch.data import load_dataset
    from easc.backends.torch.train import TrainConfig, train_module
    from easc.search.start_nets import eas_paper

    graph = eas_paper()
    probes = probe_inputs(graph, 2, 0)
    cases = {"widen": (widen, dict(layer="conv_2", width=64)), "deepen": (deepen, dict(after="relu_2", kernel=3))}
    costs = {}
    for name, (fn, kwargs) in cases.items():
        times = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            result = fn(graph, rng=np.random.default_rng(r), **kwargs)
            _structure(graph, result.graph)
            max_output_difference(graph, result.graph, probes, run)
            if r:
                times.append((time.perf_counter() - t0) * 1e3)
        costs[name] = statistics.median(times)
    data = load_dataset("synthetic", shape=(3, 32, 32), num_classes=10, n=CIFAR_TRAIN_IMAGES * 10 // 6)
    module = to_module(graph)
    epoch = _ms(lambda: train_module(module, data, TrainConfig(epochs=1, quiet=True), evaluate_test=False))[0]
    row = {"net": "eas-paper", "train_images": len(data.x_train), "epoch_ms": round(epoch, 1),
           **{f"{k}_ms": round(v, 2) for k, v in costs.items()},
           **{f"{k}_share_of_epoch": v / epoch for k, v in costs.items()}}
    print(f"  CIFAR-10 scale (eas-paper, {row['train_images']:,} images of 3x32x32): one epoch {epoch / 1e3:.1f} s; "
          + ", ".join(f"{k} + checks {v:.0f} ms = {100 * v / epoch:.3f}%" for k, v in costs.items()), flush=True)
    return row


def bench_depth(depths, repeats: int) -> list:
    rows = []
    for depth in depths:
        graph = plain_net(depth)
        epoch = epoch_ms(graph)
        probes = probe_inputs(graph, PROBE_BATCH, 0)
        for name, (fn, kwargs) in depth_cases(depth).items():
            times = {"pass": [], "verify": [], "interp": [], "ort": [], "chain": []}
            diff = scale = None
            for r in range(repeats + 1):  # the first round warms up (imports, onnxruntime's first session)
                t_pass, result = _ms(lambda: fn(graph, rng=np.random.default_rng(r), **kwargs))
                t_verify, _ = _ms(lambda: _structure(graph, result.graph))
                t_interp, _ = _ms(lambda: max_output_difference(graph, result.graph, probes, run))
                t_ort, (diff, scale) = _ms(lambda: max_output_difference(graph, result.graph, probes, run_onnx))
                # In a chain (the search, `easc transform`) the graph before a pass is the one the previous
                # check already ran: a ProbeSet remembers its outputs, so only the new graph is run.
                chain = ProbeSet(probes)
                chain.outputs(graph, run)
                t_chain, _ = _ms(lambda: max_output_difference(graph, result.graph, chain, run))
                if r:
                    for key, t in zip(times, (t_pass, t_verify, t_interp, t_ort, t_chain)):
                        times[key].append(t)
            row = {"depth": depth, "nodes": len(graph.nodes), "pass": name,
                   **{f"{k}_ms": round(statistics.median(v), 3) for k, v in times.items()},
                   "rel_error_ort": diff / (1 + scale), "epoch_ms": round(epoch, 1)}
            # What the search pays per pass (pass + verifier + interpreter check) against one epoch of training.
            row["share_of_epoch"] = (row["pass_ms"] + row["verify_ms"] + row["interp_ms"]) / epoch
            row["share_of_epoch_in_chain"] = (row["pass_ms"] + row["verify_ms"] + row["chain_ms"]) / epoch
            rows.append(row)
            print(f"  depth {depth:>3} ({row['nodes']:>3} nodes)  {name:<12}  pass {row['pass_ms']:8.2f}  "
                  f"verify {row['verify_ms']:8.2f}  interp check {row['interp_ms']:8.2f}  "
                  f"onnxruntime check {row['ort_ms']:8.2f}   (ms); one training epoch {epoch:8.0f} ms, "
                  f"pass + checks = {100 * row['share_of_epoch']:.2f}% of it "
                  f"({100 * row['share_of_epoch_in_chain']:.2f}% in a chain)", flush=True)
    return rows


# -- 2. verification error over random pass applications --------------------------------------
def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def random_application(graph: Graph, rng: np.random.Generator):
    """(pass name, PassResult) of one random pass with random arguments; None when nothing applies."""
    refused = 0
    for _ in range(MAX_TRIES):
        name = _pick(rng, PASSES)
        try:
            if name == "widen":
                layers = widenable_layers(graph)
                if not layers:
                    continue
                layer = _pick(rng, layers)
                current = graph.node(layer).width
                result = widen(graph, layer, current + int(rng.integers(1, current + 1)), rng=rng)
            elif name == "deepen":
                values = deepenable(graph)
                if not values:
                    continue
                result = deepen(graph, _pick(rng, values), kernel=_pick(rng, (1, 3, 5)), rng=rng)
            elif name == "skip":
                pairs = skip_candidates(graph)
                if not pairs:
                    continue
                src, dst = _pick(rng, pairs)
                result = skip(graph, src, dst, rng=rng)
            else:
                convs = [c for c in kernel_widenable(graph) if max(graph.node(c).attrs["kernel"]) + 2 <= MAX_KERNEL]
                if not convs:
                    continue
                result = widen_kernel(graph, _pick(rng, convs), rng=rng)
        except PassError:
            refused += 1
            continue
        return name, result, refused
    return None, None, refused


def _summary(values) -> dict:
    a = np.asarray(values, np.float64)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "max": float(np.max(a))}


def bench_errors(applications: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    errors = {"interp": [], "ort": []}
    by_pass = {name: {"interp": [], "ort": []} for name in PASSES}
    refused = graphs = 0
    next_report = max(1, applications // 10)
    start = time.perf_counter()
    while len(errors["ort"]) < applications:
        graph = random_graph(rng)
        graphs += 1
        for _ in range(CHAIN):
            if len(errors["ort"]) >= applications:
                break
            name, result, n_refused = random_application(graph, rng)
            refused += n_refused
            if result is None:
                break
            verify(result.graph)
            probes = probe_inputs(graph, PROBE_BATCH, int(rng.integers(2**31)))
            for key, executor in (("interp", run), ("ort", run_onnx)):
                diff, scale = max_output_difference(graph, result.graph, probes, executor)
                errors[key].append(diff / (1 + scale))
                by_pass[name][key].append(diff / (1 + scale))
            graph = result.graph
        if len(errors["ort"]) >= next_report:
            print(f"  {len(errors['ort'])}/{applications} applications ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            next_report += max(1, applications // 10)
    return {
        "applications": len(errors["ort"]),
        "graphs": graphs,
        "refused_draws": refused,
        "tolerance": PRESERVATION_RTOL,
        "over_tolerance": {k: int(np.sum(np.asarray(v) > PRESERVATION_RTOL)) for k, v in errors.items()},
        "interp": _summary(errors["interp"]),
        "ort": _summary(errors["ort"]),
        "by_pass": {name: {k: _summary(v) for k, v in d.items()} for name, d in by_pass.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def _print_errors(err: dict) -> None:
    print(f"\nverification error max|diff| / (1 + max|out|) over {err['applications']} random pass applications "
          f"({err['graphs']} random graphs, {err['refused_draws']} refused argument draws), "
          f"tolerance {err['tolerance']:g}:")
    print(f"  {'executor':<22} {'n':>5} {'median':>10} {'p99':>10} {'max':>10}  over tolerance")
    labels = {"interp": "interpreter (float64)", "ort": "onnxruntime (float32)"}
    for key in ("interp", "ort"):
        s = err[key]
        print(f"  {labels[key]:<22} {s['n']:>5} {s['median']:>10.2e} {s['p99']:>10.2e} {s['max']:>10.2e}  "
              f"{err['over_tolerance'][key]}")
    print("  by pass (onnxruntime):")
    for name, d in err["by_pass"].items():
        s = d["ort"]
        if s["n"]:
            print(f"    {name:<20} {s['n']:>5} {s['median']:>10.2e} {s['p99']:>10.2e} {s['max']:>10.2e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 100 random applications")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per pass and depth [7]")
    parser.add_argument("--applications", type=int, default=None, help="random pass applications [1000]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    applications = args.applications or (100 if args.quick else 1000)

    print(f"pass + verification cost against depth (median of {repeats}, ms):", flush=True)
    depth_rows = bench_depth(DEPTHS, repeats)
    print("\nthe same share at CIFAR-10 scale:", flush=True)
    cifar_row = cifar_scale_share(repeats)
    print(f"\nrandom pass applications ({applications}):", flush=True)
    err = bench_errors(applications, args.seed)
    _print_errors(err)

    import onnxruntime

    report = {
        "benchmark": "bench_passes",
        "quick": args.quick,
        "repeats": repeats,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "net": {"layer": "conv 3x3 -> batchnorm -> relu", "width": WIDTH, "input": list(INPUT),
                "probe_batch": PROBE_BATCH},
        "depth": depth_rows,
        "cifar_scale": cifar_row,
        "error": err,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
