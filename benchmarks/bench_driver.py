"""Search driver time per child at paper scale (issue 9): sampling one child, every check on.

The `eas-paper` start net (PAPER.md's plain CIFAR start: C(16)-P-C(32)-P-C(64)-P-C(128)-P-FC(256)-FC(10)) on
3x32x32 inputs, widened x1.25 (`widen_all`) until it has at least `--min-params` (3M) parameters: the size the
paper's search reaches. On it, children are sampled exactly as `easc.search.loop.Search._sample_child` does:
a random policy's 4 Net2Wider then 5 Net2Deeper decisions, applied by `PlainSpace` with the search's widen
noise (0.01), each new batchnorm calibrated on 128 images, each action checked (verifier, signature, numeric
check) in a `PassManager` sharing one probe set per child (2 probe images, as the search uses).

Two arms, alternating child by child on the same decisions (same policy seed per child):

    local   the manager's default: the numeric check of the rewritten region only (what the search runs)
    full    the check before issue 9: every action compared on the whole graph's outputs (check="full",
            reference interpreter; outputs of the graph before each action remembered along the chain)

Both arms take the new batchnorms' statistics from `search.calibration.CalibrationStats` (the parent measured
once per step on the 128 images in float32, carried through each child's passes), so the difference is the
check alone. Printed: median driver seconds per child in each arm (target for `local`: at most 0.5 s), the
ratio, and the once-per-step measurement of the parent, separately.

    python benchmarks/bench_driver.py [--children 10] [--min-params 3000000] [--smoke]

Writes benchmarks/results/bench_driver.json and .log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from easc.ir import probe_inputs  # noqa: E402
from easc.passes.base import ProbeSet  # noqa: E402
from easc.passes.manager import PassManager  # noqa: E402
from easc.passes.pipeline import widen_all  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WIDER, DEEPER = 4, 5
TARGET = 0.5


def grown_start(min_params: int, shape=(3, 32, 32)):
    from easc.search.start_nets import eas_paper

    graph = eas_paper(shape)
    while graph.params < min_params:  # small steps, so that the net ends just above min_params
        graph = widen_all(graph, 1.25, rng=np.random.default_rng(0))[-1].graph
    return graph


def _space(check: str):
    from easc.search.plain_space import PlainSpace
    from easc.search.tokens import SearchSpace

    class Space(PlainSpace):
        def manager(self, graph, rng, probes):
            return PassManager(graph, rng=rng, probes=probes, on_refusal="skip", check=check)

    return Space(SearchSpace.paper(), widen_noise=0.01)


def sample_child(space, parent, seed: int, index: int, calibration) -> tuple:
    """One child as the search samples it: (seconds, child graph, action records)."""
    from easc.search.controller import make_policy
    from easc.search.plain_space import child_rng

    policy = make_policy("random", space.space, seed + index)
    start = time.perf_counter()
    rng = child_rng(seed, 1, index)
    probes = ProbeSet(probe_inputs(parent, 2, seed=1000 + index))
    graph, records = parent, []
    for kind, count in (("wider", WIDER), ("deeper", DEEPER)):
        for _ in range(count):
            tokens = space.tokens(graph)
            if kind == "wider":
                graph, recs = space.apply_wider(graph, policy.sample_wider(tokens), rng, probes, calibration)
            else:
                graph, recs = space.apply_deeper(graph, policy.sample_deeper(tokens), rng, probes, calibration)
            records.extend(recs)
    return time.perf_counter() - start, graph, records


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10)
    parser.add_argument("--min-params", type=int, default=3_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 children of a 300k-parameter net (for the tests)")
    parser.add_argument("--out", default=str(RESULTS / "bench_driver.json"))
    args = parser.parse_args(argv)
    children = 2 if args.smoke else args.children
    min_params = 300_000 if args.smoke else args.min_params
    lines = []

    def log(line):
        print(line, flush=True)
        lines.append(line)

    parent = grown_start(min_params)
    calibration = np.random.default_rng(args.seed).standard_normal((128, 3, 32, 32)).astype(np.float32)
    command = "python benchmarks/bench_driver.py" + (" --smoke" if args.smoke else
                                                       f" --children {children} --min-params {min_params}")
    log(f"bench_driver: {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"python {platform.python_version()}")
    log(f"command: {command}")
    log(f"start net: eas-paper grown to {parent.params:,} parameters, depth {parent.depth}, "
        f"widths {[n.width for n in parent.layers()]}")
    spaces = {"local": _space("local"), "full": _space("full")}
    measure = {}
    for arm, space in spaces.items():  # once per parent, i.e. once per search step, shared by its children
        start = time.perf_counter()
        space.calibration.stats(parent, parent.nodes[1].name, calibration)
        measure[arm] = time.perf_counter() - start
    log(f"parent's calibration statistics, measured once per step: {measure['local']:.3f} s")
    times = {arm: [] for arm in spaces}
    sizes = []
    for index in range(children):
        order = list(spaces) if index % 2 == 0 else list(reversed(spaces))
        for arm in order:
            seconds, child, records = sample_child(spaces[arm], parent, args.seed, index, calibration)
            times[arm].append(seconds)
            if arm == "local":
                skipped = sum("skipped" in r for r in records)
                sizes.append(child.params)
                log(f"child {index}: local {seconds:.3f} s, {len(records)} actions ({skipped} skipped), "
                    f"{child.params:,} parameters")
            else:
                log(f"child {index}: full  {seconds:.3f} s")
    local, full = statistics.median(times["local"]), statistics.median(times["full"])
    log(f"median driver time per child: local check {local:.3f} s (target <= {TARGET} s), "
        f"whole-graph check {full:.3f} s, ratio {full / local:.1f}x; plus {measure['local']:.3f} s per step for "
        f"the parent's calibration statistics ({measure['local'] / 8:.3f} s per child at 8 children a step)")
    report = {"benchmark": "bench_driver", "mode": "smoke" if args.smoke else "full", "command": command,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()[0],
              "start_params": parent.params, "child_params": sizes, "seconds": times,
              "parent_calibration_seconds": measure["local"],
              "headline": [{"metric": f"driver seconds per child, local check (target <= {TARGET})",
                            "value": round(local, 3)},
                           {"metric": "driver seconds per child, whole-graph check", "value": round(full, 3)}]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".log").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
