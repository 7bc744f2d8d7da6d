"""Where folding a widen's split columns beats the float64 product in the local check (`FOLD_POSITIONS`).

A layer reading a widen's copies is checked either by folding its weights back onto the old columns
(`local_channels.linear_delta`: a few numpy passes over the weights, whatever the positions) or by evaluating it
whole in float64 (2 x positions operations per weight). On a pair of convs widened x2 together (`widen_many`: conv
a -> batchnorm -> relu -> conv c -> relu -> 1x1 conv), 4 probes, the check is timed with every reader folded
(FOLD_POSITIONS = 0) and with every one evaluated whole (FOLD_POSITIONS = infinity), alternating, median of the
repeats, for 1x1 and 3x3 kernels, 64 and 256 channels, 2x2 to 16x16 maps (16 to 1,024 positions). Printed: both
times and their ratio (fold / whole) per case; `FOLD_POSITIONS` should sit where the ratio crosses 1.

    python benchmarks/bench_fold.py [--repeats 5] [--smoke]

Writes benchmarks/results/bench_fold.json and .log.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from easc.ir.builder import GraphBuilder
from easc.passes import local_channels
from easc.passes.manager import PassManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transform import report_head, run_header, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NEVER = 1 << 62


def _pair(channels: int, size: int, kernel: int):
    b = GraphBuilder(rng=np.random.default_rng(0))
    x = b.input("x", (channels, size, size))
    a = b.conv2d(x, channels, kernel, padding=kernel // 2, name="a")
    c = b.conv2d(b.relu(b.batchnorm(a)), channels, kernel, padding=kernel // 2, name="c")
    b.output("y", b.conv2d(b.relu(c), 8, 1, name="d"))
    return b.build()


def _check_seconds(graph, fold_positions: int, seed: int) -> float:
    saved = local_channels.FOLD_POSITIONS
    local_channels.FOLD_POSITIONS = fold_positions
    try:
        manager = PassManager(graph, seed=seed)
        manager.probes.activations(graph)
        manager.run("widen_many", layers=["a", "c"], factor=2.0)
        return manager.stats[-1].check_seconds
    finally:
        local_channels.FOLD_POSITIONS = saved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one small case, once (for the tests)")
    parser.add_argument("--out", default=str(RESULTS / "bench_fold.json"))
    args = parser.parse_args(argv)
    repeats = 1 if args.smoke else args.repeats
    cases = [(1, 64, 4)] if args.smoke else [(k, c, h) for k in (1, 3) for c in (64, 256) for h in (2, 4, 8, 16)]
    command = "python " + " ".join(["benchmarks/bench_fold.py", *sys.argv[1:]])
    lines = [run_header("bench_fold", repeats), f"command: {command}"]
    rows = []
    for kernel, channels, size in cases:
        graph = _pair(channels, size, kernel)
        fold, whole = [], []
        for seed in range(repeats):
            fold.append(_check_seconds(graph, 0, seed))
            whole.append(_check_seconds(graph, NEVER, seed))
        row = {"kernel": kernel, "channels": channels, "size": size, "positions": 4 * size * size,
               "fold_seconds": statistics.median(fold), "whole_seconds": statistics.median(whole)}
        row["fold_over_whole"] = row["fold_seconds"] / row["whole_seconds"]
        rows.append(row)
        lines.append(f"kernel {kernel}x{kernel}  channels {channels:4d}  map {size:2d}x{size:<2d}  positions "
                     f"{row['positions']:5d}: fold {row['fold_seconds'] * 1e3:7.2f} ms  whole "
                     f"{row['whole_seconds'] * 1e3:7.2f} ms  fold/whole {row['fold_over_whole']:.2f}")
        print(lines[-1], flush=True)
    by_positions: dict = {}
    for row in rows:
        by_positions.setdefault(row["positions"], []).append(row["fold_over_whole"])
    headline = [{"metric": f"fold / whole check time at {p} positions (min-max over kernels and widths)",
                 "value": f"{min(v):.2f}-{max(v):.2f}"} for p, v in sorted(by_positions.items())]
    lines += [f"{h['metric']}: {h['value']}" for h in headline]
    lines.append(f"FOLD_POSITIONS = {local_channels.FOLD_POSITIONS}")
    print("\n".join(lines[-len(headline) - 1:]))
    report = {**report_head("bench_fold", args.smoke, command), "repeats": repeats,
              "fold_positions": local_channels.FOLD_POSITIONS, "rows": rows, "headline": headline}
    write_results(args.out, report, lines)
    return report


if __name__ == "__main__":
    main()
