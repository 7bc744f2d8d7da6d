"""`easc transform` of two revisions side by side, alternating, in one run: what a change did to wall and memory.

    python benchmarks/bench_ab.py --base REV [--new REV] [--models resnet18,densenet121] [--chains widen,skip]
                                  [--repeats 6] [--smoke]

These machines are shared and their speed moves by up to 1.5x between runs, more than most changes are worth,
so a change is judged by running the code before it and the code after it back to back: each repeat runs both
sides on the same model and chain, in turn, the order alternating (base first on even repeats), and the figure is
the median of the paired ratios new / base. The models and chains are bench_transform's (`MODELS`, `_chains`:
standard layouts exported by torch, a `--widen`, 10 deepens, 10 skips), each command run as a user runs it, in
its own process, with its wall time and peak RSS measured the same way (`_measured`).

Each side is an importable copy of easc: a folder holding `easc/`, whose subpackages link to the revision's
folders as pyproject.toml's package-dir maps them, and the command runs with PYTHONPATH set to it. The base is a
`git worktree add --detach` of REV in a temporary folder (removed at the end); the new side is the working tree
(default) or another revision checked out the same way. Both sides' modules are compiled to bytecode first (as an
installed package has them; see bench_transform's `compile_package`), so both import alike.

`--smoke` runs resnet18's widen at 1x3x32x32 against HEAD, once, for the test suite. Writes
benchmarks/results/bench_ab.json and .log (replaced: a run is one comparison).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_transform  # noqa: E402 - the benchmark next to this one: its models, chains and measurement

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def _git(*args, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def package_folder(tree: Path, into: Path) -> Path:
    """A folder from which `import easc` imports the source tree `tree`: `easc/__init__.py` copied, and a link
    per subpackage to the folder pyproject.toml's package-dir maps it to. Returns the folder (for PYTHONPATH)."""
    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = into / "easc"
    root.mkdir(parents=True)
    shutil.copy2(tree / mapping["easc"] / "__init__.py", root / "__init__.py")
    for package, folder in mapping.items():
        if package.count(".") == 1:  # easc.ir -> eas_ir, easc.passes -> passes, ...
            (root / package.split(".")[1]).symlink_to(tree / folder, target_is_directory=True)
            compileall.compile_dir(str(tree / folder), quiet=1)  # (compile_dir does not follow links)
    compileall.compile_dir(str(root), quiet=1)
    probe = "import easc.cli.main, easc.passes; print(easc.passes.__path__[0])"
    found = subprocess.run([sys.executable, "-P", "-c", probe], env={**os.environ, "PYTHONPATH": str(into)},
                           capture_output=True, text=True, check=True).stdout.strip()
    if Path(found) != root / "passes":  # another easc (an installed one) came first: the comparison would be void
        raise RuntimeError(f"with PYTHONPATH={into}, easc.passes is imported from {found}, not from {root / 'passes'}")
    return into


def checkout(rev: str, stack: ExitStack, scratch: Path, label: str) -> tuple:
    """(source tree, commit) of `rev`: a detached worktree in `scratch`, removed when `stack` closes."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = scratch / f"{label}-tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    stack.callback(lambda: subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                                          capture_output=True))
    return tree, commit


def _run(folder: Path, source: Path, args: list, output: Path) -> tuple:
    """(wall, peak RSS) of `easc transform SOURCE ARGS -o OUTPUT` importing easc from `folder`."""
    env = {**os.environ, "PYTHONPATH": str(folder)}  # ahead of the installed (editable) easc
    # -P: not the working directory first on sys.path (from the repository's root, its `easc/` would come first)
    wall, rss, _ = bench_transform._measured(
        [sys.executable, "-P", "-m", "easc.cli.main", "transform", source, *args, "-o", output], env=env)
    return wall, rss


def compare(sides: dict, models: list, chains: list, repeats: int, shape_override=None, log=print) -> list:
    """Alternating runs of both sides (`sides`: label -> package folder, "base" and "new") per model and chain."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models:
            shape = shape_override or bench_transform.MODELS.get(name, (3, 64, 64))
            source = tmp / f"{name}.onnx"
            bench_transform._export(name, shape, source)
            every = bench_transform._chains(source)
            for chain in chains:
                args = every[chain]
                walls = {"base": [], "new": []}
                rsss = {"base": [], "new": []}
                for r in range(repeats):
                    for side in (("base", "new") if r % 2 == 0 else ("new", "base")):
                        wall, rss = _run(sides[side], source, args, tmp / f"{name}_{chain}_{side}.onnx")
                        walls[side].append(wall)
                        rsss[side].append(rss)
                ratios = [n / b for n, b in zip(walls["new"], walls["base"])]
                row = {"model": name, "chain": chain, "repeats": repeats,
                       "base_wall": statistics.median(walls["base"]), "new_wall": statistics.median(walls["new"]),
                       "wall_ratio": statistics.median(ratios), "wall_ratios": ratios,
                       "base_rss": statistics.median(rsss["base"]), "new_rss": statistics.median(rsss["new"]),
                       "base_walls": walls["base"], "new_walls": walls["new"]}
                row["rss_ratio"] = row["new_rss"] / row["base_rss"]
                rows.append(row)
                log(f"{name:15} {chain:7} base {row['base_wall']:5.2f} s  new {row['new_wall']:5.2f} s  "
                    f"new/base {row['wall_ratio']:.2f} (paired, {min(ratios):.2f}-{max(ratios):.2f})  "
                    f"peak RSS base {row['base_rss'] / 1e6:6.1f} MB  new {row['new_rss'] / 1e6:6.1f} MB  "
                    f"new/base {row['rss_ratio']:.2f}")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the revision before the change [HEAD]")
    parser.add_argument("--new", default=None, help="the revision after it [the working tree]")
    parser.add_argument("--models", default="resnet18,densenet121")
    parser.add_argument("--chains", default="widen,deepen,skip")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="resnet18 --widen at 3x32x32 against HEAD, once")
    parser.add_argument("--out", default=str(RESULTS / "bench_ab.json"))
    args = parser.parse_args(argv)
    models = ["resnet18"] if args.smoke else [m for m in args.models.split(",") if m]
    chains = ["widen"] if args.smoke else [c for c in args.chains.split(",") if c]
    unknown = [c for c in chains if c not in ("widen", "deepen", "skip")]
    if unknown:
        parser.error(f"--chains: unknown chain {unknown[0]!r} (chains: widen, deepen, skip)")
    repeats = 1 if args.smoke else args.repeats
    base_rev = "HEAD" if args.smoke else args.base
    lines = []

    def log(line):
        print(line, flush=True)
        lines.append(line)

    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base_tree, base_commit = checkout(base_rev, stack, scratch, "base")
        if args.new is None:
            new_tree, new_commit = REPO, "working tree at " + _git("rev-parse", "HEAD")
        else:
            new_tree, new_commit = checkout(args.new, stack, scratch, "new")
        sides = {"base": package_folder(base_tree, scratch / "base-package"),
                 "new": package_folder(new_tree, scratch / "new-package")}
        log(bench_transform.run_header("bench_ab", repeats))
        command = "python benchmarks/bench_ab.py" + (" --smoke" if args.smoke else
                                                     f" --base {args.base}" + (f" --new {args.new}" if args.new else "")
                                                     + f" --models {','.join(models)} --chains {','.join(chains)}"
                                                     f" --repeats {repeats}")
        log(f"command: {command}")
        log(f"base: {base_rev} = {base_commit}; new: {args.new or 'the working tree'} = {new_commit}")
        rows = compare(sides, models, chains, repeats, (3, 32, 32) if args.smoke else None, log)
    headline = []
    for r in rows:
        headline.append({"metric": f"{r['model']} {r['chain']}: wall new / base (median of paired runs)",
                         "value": round(r["wall_ratio"], 3)})
        headline.append({"metric": f"{r['model']} {r['chain']}: peak RSS new / base",
                         "value": round(r["rss_ratio"], 3)})
    report = {**bench_transform.report_head("bench_ab", args.smoke, command), "base": base_commit,
              "new": new_commit, "rows": rows, "headline": headline}
    bench_transform.write_results(args.out, report, lines)
    return report


if __name__ == "__main__":
    main()
