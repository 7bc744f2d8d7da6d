"""Decoding an image folder: easc's parallel, cached loader against a plain single-process Pillow loop.

Generates a folder of N (default 20,000) 32x32 RGB PNG files in CIFAR's shape (10 class folders; each image a
smooth random colour field plus noise, so PNG compression does real work), then, side by side in one run and
alternating which goes first, for each repeat:

    plain     sorted(glob) per class folder, then for every file np.asarray(Image.open(f).convert("RGB")),
              stacked into one uint8 array: what a user writes by hand (one process)
    easc      easc.backends.torch.imagefolder.load_folder into an empty cache folder: listing (a stat per
              file for the cache key), parallel decoding over all available cores, writing the cache entry
    decode    the same without the cache (listing + parallel decoding only): what the cache write costs
    one       the easc arm with a single decoding process: easc's own overhead against the plain loop
    cached    load_folder again on the same folder: listing (the stats for the key), opening the cache entry
              (its checksum is recomputed only if images.npy was written since it was checksummed), mapped
    cached_read   the cached arm plus one read of every pixel (np.count_nonzero): both easc arms return the
              entry mapped, so this is what the first use of a cached load's pixels adds at most

Reported: medians of the wall times, `decode speedup` = plain / easc (the issue asks for >= 1.6x on 2 cores;
`decode_only_speedup` = plain / decode beside it) and `cache speedup` = easc / cached (asks for >= 10x;
`cache_read_speedup` = easc / cached_read beside it), with
the load average before and after and `parallel_efficiency`: a pure-Python CPU loop run twice in one process
against once in each of two processes, measured in the same run. On a machine whose cores are shared with
other jobs that figure falls well below 2 and bounds every parallel speedup here. Arrays are compared for
equality.

    python benchmarks/bench_data.py [--images 20000] [--repeats 3] [--workers N] [--smoke] [--out PATH]

Writes benchmarks/results/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def generate(root: Path, n: int, size: int = 32, classes: int = 10, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
    base = np.linspace(0, 1, size)
    for i in range(n):
        colour = rng.uniform(0, 255, (1, 1, 3))
        field = (colour * base[:, None, None] + (255 - colour) * base[None, :, None]) / 2
        img = np.clip(field + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"class_{i % classes}" / f"{i:06d}.png")


def plain_loop(root: Path) -> np.ndarray:
    from PIL import Image

    files = [f for c in sorted(p for p in root.iterdir() if p.is_dir()) for f in sorted(c.glob("*.png"))]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def load_easc(root: Path, workers: int | None):
    from easc.backends.torch.imagefolder import load_folder

    return load_folder(root, progress=False, workers=workers)


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def parallel_efficiency(n: int = 3_000_000) -> float:
    """(time of two CPU-bound loops in one process) / (time of the same two in two processes at once)."""
    import multiprocessing as mp

    t = time.perf_counter()
    _spin(n)
    _spin(n)
    serial = time.perf_counter() - t
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # workers started before timing
        t = time.perf_counter()
        pool.map(_spin, [n, n])
        parallel = time.perf_counter() - t
    return serial / parallel


def loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes [default: all cores]")
    ap.add_argument("--smoke", action="store_true", help="600 images, 1 repeat: checks that the script runs")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_data.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.repeats = 600, 1

    work = Path(tempfile.mkdtemp(prefix="easc_bench_data_"))
    previous_cache = os.environ.get("EASC_CACHE_DIR")
    try:
        root = work / "images"
        t = time.perf_counter()
        generate(root, args.images)
        print(f"generated {args.images} 32x32 PNG files in {time.perf_counter() - t:.1f} s")
        load_before = loadavg()
        times = {"plain": [], "easc": [], "decode": [], "one": [], "cached": [], "cached_read": []}
        efficiency = []
        same = True
        for r in range(args.repeats):
            # A fresh cache folder per repeat: the easc arm always decodes, the cached arm always hits.
            os.environ["EASC_CACHE_DIR"] = str(work / f"cache_{r}")
            efficiency.append(parallel_efficiency())
            arms = ["plain", "easc", "decode", "one"] if r % 2 == 0 else ["one", "decode", "easc", "plain"]
            for arm in arms:
                t = time.perf_counter()
                if arm == "plain":
                    ref = plain_loop(root)
                elif arm == "easc":
                    got = load_easc(root, args.workers)
                    assert not got.from_cache
                elif arm == "one":
                    os.environ["EASC_CACHE_DIR"] = str(work / f"cache_{r}_one")
                    assert not load_easc(root, 1).from_cache
                    os.environ["EASC_CACHE_DIR"] = str(work / f"cache_{r}")
                else:
                    from easc.backends.torch.imagefolder import decode, scan

                    decoded = decode(scan(root), progress=False, workers=args.workers)
                times[arm].append(time.perf_counter() - t)
            t = time.perf_counter()
            again = load_easc(root, args.workers)
            times["cached"].append(time.perf_counter() - t)
            assert again.from_cache
            t = time.perf_counter()
            again_read = load_easc(root, args.workers)
            np.count_nonzero(again_read.images)
            times["cached_read"].append(time.perf_counter() - t)
            same = same and all(np.array_equal(ref, a.images) for a in (got, again, decoded))
            print(f"repeat {r + 1}/{args.repeats}: plain {times['plain'][-1]:.3f} s, easc {times['easc'][-1]:.3f} s, "
                  f"decode only {times['decode'][-1]:.3f} s, one process {times['one'][-1]:.3f} s, "
                  f"cached {times['cached'][-1]:.3f} s (read {times['cached_read'][-1]:.3f} s), "
                  f"parallel efficiency {efficiency[-1]:.2f}")
        load_after = loadavg()
    finally:
        if previous_cache is None:
            os.environ.pop("EASC_CACHE_DIR", None)
        else:
            os.environ["EASC_CACHE_DIR"] = previous_cache
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    decode_speedup = med["plain"] / med["easc"]
    cache_speedup = med["easc"] / med["cached"]
    cache_read_speedup = med["easc"] / med["cached_read"]
    decode_only = med["plain"] / med["decode"]
    one_process = med["plain"] / med["one"]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    report = {
        "benchmark": "bench_data",
        "mode": "smoke" if args.smoke else "full",
        "images": args.images,
        "repeats": args.repeats,
        "cores": cores,
        "workers": args.workers or cores,
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "decode_speedup": round(decode_speedup, 2),
        "decode_only_speedup": round(decode_only, 2),
        "one_process_speedup": round(one_process, 2),
        "parallel_efficiency": [round(e, 2) for e in efficiency],
        "cache_speedup": round(cache_speedup, 1),
        "cache_read_speedup": round(cache_read_speedup, 1),
        "arrays_equal": bool(same),
        "headline": [
            {"metric": f"decode {args.images} PNGs: easc / plain Pillow loop", "value": f"{decode_speedup:.2f}x"},
            {"metric": "second load from the cache / first load", "value": f"{cache_speedup:.1f}x"},
        ],
    }
    print(f"median: plain {med['plain']:.3f} s, easc {med['easc']:.3f} s, decode only {med['decode']:.3f} s, "
          f"cached {med['cached']:.3f} s, cached and every pixel read {med['cached_read']:.3f} s")
    print(f"decode speedup (plain / easc): {decode_speedup:.2f}x on {cores} cores (without the cache write: "
          f"{decode_only:.2f}x; with one decoding process: {one_process:.2f}x; two processes ran "
          f"{statistics.median(efficiency):.2f}x one on a CPU loop); "
          f"cache speedup (easc / cached): {cache_speedup:.1f}x ({cache_read_speedup:.1f}x with every pixel read "
          f"once); arrays equal: {same}; "
          f"load average before {load_before}, after {load_after}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
