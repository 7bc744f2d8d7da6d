"""Apply passes by name, each followed by its check: the one entry point the CLI and the search use.

`apply_pass(graph, "widen", layer="conv_3", width=96)` runs the pass and `checked` (verifier,
signature, numeric preservation on seeded probes) before returning. `widen_all` is the CLI's bare
`--widen`: every widenable layer multiplied by a factor, one verified pass at a time.
"""

from __future__ import annotations

import math

import numpy as np

from easc.ir import Graph, probe_inputs, run

from .base import PROBE_BATCH, PassError, PassResult, checked


def registry() -> dict:
    from .deepen import deepen
    from .dense import dense_deepen, dense_widen
    from .skip import skip
    from .widen import widen
    from .widen_kernel import widen_kernel

    return {"widen": widen, "deepen": deepen, "skip": skip, "widen_kernel": widen_kernel,
            "dense_widen": dense_widen, "dense_deepen": dense_deepen}


def apply_pass(graph: Graph, name: str, *, rng: np.random.Generator | None = None, probes: dict | None = None,
               executor=run, numeric: bool = True, **kwargs) -> PassResult:
    """Run pass `name` on `graph` with `kwargs`, then verify it (raises on any failure)."""
    passes = registry()
    if name not in passes:
        raise PassError(f"unknown pass {name!r} (passes: {', '.join(passes)})")
    rng = rng if rng is not None else np.random.default_rng(0)
    result = passes[name](graph, rng=rng, **kwargs)
    if probes is None and numeric:
        probes = probe_inputs(graph, PROBE_BATCH)
    return checked(graph, result, probes, executor, numeric)


def widen_all(graph: Graph, factor: float, *, rng=None, probes=None, executor=run, noise: float = 0.0) -> list:
    """Widen every widenable layer to ceil(width * factor), one checked pass each.

    Layers coupled through a residual add are widened together by the first of them, so the later
    ones are already at their target width and are skipped.
    """
    from .widen import nearest_valid_width, widenable_layers

    if not factor > 1:
        raise PassError(f"--factor must be greater than 1, got {factor}")
    results = []
    targets = {name: nearest_valid_width(graph, name, math.ceil(graph.node(name).width * factor))
               for name in widenable_layers(graph)}
    for name, width in targets.items():
        if graph.node(name).width >= width:
            continue
        result = apply_pass(graph, "widen", rng=rng, probes=probes, executor=executor, layer=name, width=width,
                            noise=noise)
        results.append(result)
        graph = result.graph
    if not targets:
        raise PassError("no layer of this graph can be widened (layers that reach an output cannot)")
    return results
