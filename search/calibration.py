"""Batchnorm calibration statistics for a search's Net2Deeper actions: measured once per parent, carried
through each child's passes.

A Net2Deeper action inserts an identity block after a value x and calibrates its batchnorm with the
per-channel mean and variance of x on a batch of training images (`passes.deepen`). Measuring them by running
the child up to x, once per action, cost most of the driver's time at CIFAR-10 scale: five forward passes of
128 images through a network of millions of parameters per child. But every pass preserves the function, so
x's values on those images are values the *parent* computes too:

- a value the child's passes did not touch has the parent's statistics;
- a widened value (`PassResult.channels`: new channel j copies old channel g(j)) has the statistics of the
  channel it copies, mean'[j] = mean[g(j)], var'[j] = var[g(j)], exactly (a copy computes what its
  original does);
- the nodes of an inserted identity block carry x's statistics (the block computes x);
- downstream of a widen with noise the values move by about the noise (1% by default); the statistics are
  the parent's, which is what they are for (where training of the new batchnorm starts; the function is
  exact in eval mode whatever they are).

So the parent is measured once, on all its values in one float32 forward pass (the PyTorch backend, in
batches of BATCH images, sums and sums of squares in float64), and each child's statistics follow from its
passes at no cost. A value with nothing known (another pass rewrote it) falls back to measuring the child
up to it (`passes.deepen.calibration_stats`, the reference interpreter on the prefix only).
"""

from __future__ import annotations

import weakref

import numpy as np

from easc.ir import Graph

BATCH = 32
"""Images per forward pass when measuring a parent: bounds the memory of holding every value at once."""


def measure(graph: Graph, images: np.ndarray) -> dict:
    """Per-channel (mean, population variance) of every NCHW / NC value of `graph` on `images` (float32)."""
    import torch

    from easc.backends.torch.module import to_module

    names = [n.name for n in graph.nodes if n.op != "input" and n.type.rank in (2, 4)]
    module = to_module(graph.replace(outputs={n: n for n in names})).eval()
    sums: dict = {}
    count = 0
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            values = module(torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH], np.float32)))
            values = values if isinstance(values, tuple) else (values,)
            for name, v in zip(names, values):
                axes = (0,) if v.dim() == 2 else (0, 2, 3)
                v = v.double()
                s1, s2 = v.sum(axes), (v * v).sum(axes)
                if name in sums:
                    sums[name][0].add_(s1)
                    sums[name][1].add_(s2)
                else:
                    sums[name] = [s1, s2]
            count += len(values[0]) if values else 0
    stats = {}
    for name, (s1, s2) in sums.items():
        per = graph.node(name).type
        n = len(images) * (1 if per.rank == 2 else per.shape[2] * per.shape[3])
        mean = (s1 / n).numpy()
        stats[name] = (mean, np.maximum((s2 / n).numpy() - mean * mean, 0.0))
    return stats


class CalibrationStats:
    """The statistics known for each graph of a search's chains (weakly, by graph; see the module doc)."""

    def __init__(self):
        self._known = weakref.WeakKeyDictionary()

    def measure_parent(self, graph: Graph, images) -> None:
        """Measure a chain's parent once, before its first pass, so that every pass of every child carries the
        statistics on (`transport`). Measured lazily instead, at a child's first deepen, the graph there is
        already a widened child that nothing is known of: each child would measure itself in full."""
        if images is None or isinstance(images, dict) or len(graph.inputs) != 1 or graph in self._known:
            return
        self._known[graph] = measure(graph, np.asarray(images))

    def stats(self, graph: Graph, after: str, images) -> tuple:
        """(mean, var) per channel of `after`'s value on `images` (a one-input graph's batch, or a dict)."""
        known = self._known.get(graph)
        if known is None and not isinstance(images, dict) and len(graph.inputs) == 1:
            known = self._known[graph] = measure(graph, np.asarray(images))  # a parent: measured once
        if known is not None and after in known:
            return known[after]
        from easc.passes.deepen import calibration_stats

        return calibration_stats(graph, after, images)

    def transport(self, before: Graph, result) -> None:
        """Carry `before`'s statistics to `result.graph` through one pass (see the module doc)."""
        known = self._known.get(before)
        if known is None or result.skipped is not None:
            return
        after = result.graph
        if result.record.get("pass") == "widen":
            new = dict(known)
            for value, index in (result.channels or {}).items():
                if value in new:
                    mean, var = new[value]
                    new[value] = (mean[index], var[index])
        elif result.record.get("pass") == "deepen":
            source = result.record["after"]
            if source not in known:
                return
            new = dict(known)
            for name in result.rewritten or ():
                node = after.node(name)
                if node.origin == source:  # the block: it computes `source`'s value
                    new[name] = known[source]
        else:
            return  # a pass whose effect on values is not modelled here: measured again when needed
        self._known[after] = {k: v for k, v in new.items() if k in after}
