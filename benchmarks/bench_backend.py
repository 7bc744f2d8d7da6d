"""Training throughput of `to_module(graph)` against the same network written by hand as nn.Sequential.

The generated module should cost nothing over hand-written PyTorch (target: within 3%), since fx
compiles the graph to plain Python that calls the same layers. Measured: images per second of a
full training step (forward, cross-entropy, backward, SGD step) at batch 64, for a small CNN
(3 conv-bn-relu blocks, a max pool, global average pooling, a linear classifier) on digits-sized
1x8x8 inputs and CIFAR-sized 3x32x32 inputs. Both models start from the same weights and see the
same batches.

Many short repeats (default 40 x 5 steps) rather than a few long ones, alternating which model
runs first (A B, B A, ...): on a shared machine a burst of another job then spoils a few repeats,
not the medians, and slow drift falls on both models. Columns: `ratio` is median(to_module) /
median(nn.Sequential) in images/s; `paired` the median of the per-repeat ratios; `best` the ratio
of the fastest repeats (timeit's estimator, the least disturbed by other jobs).

    python benchmarks/bench_backend.py [--device cuda] [--repeats 40] [--steps 5] [--threads 1]

Prints a table and writes benchmarks/results/bench_backend.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from easc.backends.torch import to_module
from easc.ir import GraphBuilder

RESULTS = Path(__file__).resolve().parent / "results" / "bench_backend.json"
WIDTHS = (16, 32, 64)
CLASSES = 10


def cnn_graph(in_shape):
    b = GraphBuilder("bench_cnn", rng=np.random.default_rng(0))
    h = b.input("x", in_shape)
    for i, width in enumerate(WIDTHS):
        h = b.relu(b.batchnorm(b.conv2d(h, width, 3, padding=1)))
        if i == 1:
            h = b.maxpool2d(h, 2)
    b.output("logits", b.linear(b.flatten(b.global_avgpool(h)), CLASSES))
    return b.build()


def cnn_sequential(in_channels):
    layers, c = [], in_channels
    for i, width in enumerate(WIDTHS):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, CLASSES)]
    return nn.Sequential(*layers)


def same_weights(src: nn.Module, dst: nn.Module):
    """Copy parameters and buffers in registration order (both models list layers in graph order)."""
    with torch.no_grad():
        for a, b in zip(list(src.parameters()) + list(src.buffers()), list(dst.parameters()) + list(dst.buffers())):
            assert a.shape == b.shape
            b.copy_(a)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, opt, batches, device) -> float:
    """Images per second over the given batches (one training step each)."""
    sync(device)
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - start)


def bench(in_shape, device, batch, steps, repeats, warmup=3):
    graph = cnn_graph(in_shape)
    generated = to_module(graph).to(device).train()
    hand = cnn_sequential(in_shape[0]).to(device).train()
    same_weights(generated, hand)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn((batch,) + tuple(in_shape), generator=g).to(device),
                torch.randint(0, CLASSES, (batch,), generator=g).to(device)) for _ in range(steps)]
    models = {"to_module": generated, "nn.Sequential": hand}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    for k, m in models.items():
        time_steps(m, opts[k], batches[:warmup], device)
    rates = {k: [] for k in models}
    for r in range(repeats):
        order = list(models) if r % 2 == 0 else list(reversed(list(models)))
        for k in order:
            rates[k].append(time_steps(models[k], opts[k], batches, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"input": list(in_shape), "batch": batch, "steps": steps, "repeats": repeats,
            "images_per_s": med, "all_images_per_s": rates,
            "ratio": med["to_module"] / med["nn.Sequential"],
            # the ratio within each repeat (same minute of machine time), then its median
            "paired_ratio": statistics.median(a / b for a, b in zip(rates["to_module"], rates["nn.Sequential"])),
            # the fastest repeat of each (timeit's estimator): what the code costs when nothing interferes
            "best_ratio": max(rates["to_module"]) / max(rates["nn.Sequential"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda[:k])")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    torch.manual_seed(0)

    results = [bench(shape, device, args.batch, args.steps, args.repeats) for shape in ((1, 8, 8), (3, 32, 32))]
    print(f"training throughput, batch {args.batch}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} repeats x {args.steps} steps")
    print(f"{'input':>10} | {'to_module img/s':>16} | {'nn.Sequential img/s':>19} | {'ratio':>6} | {'paired':>6} | "
          f"{'best':>6}")
    print("-" * 80)
    for r in results:
        shape = "x".join(str(d) for d in r["input"])
        print(f"{shape:>10} | {r['images_per_s']['to_module']:>16,.0f} | "
              f"{r['images_per_s']['nn.Sequential']:>19,.0f} | {r['ratio']:>6.3f} | {r['paired_ratio']:>6.3f} | "
              f"{r['best_ratio']:>6.3f}")
    report = {"benchmark": "bench_backend", "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "python": platform.python_version(),
              "machine": platform.machine(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
