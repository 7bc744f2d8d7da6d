"""The registered passes (the pass protocol of `base.Pass`), and the one-call entry points over the manager.

`registry()` maps each pass name to an object that declares its arguments, where it applies
(`candidates`), why it does not (`reason`) and the rewrite itself (`apply`). `apply_pass(graph, "widen",
layer="conv_3", width=96)` runs one pass through a `PassManager` (verifier, signature, numeric check of
the rewritten region) and returns its result; `widen_all` is the CLI's bare `--widen`.

The pass functions are looked up in their modules at call time (not bound at import), so a test that
replaces `easc.passes.widen.widen` replaces it for the manager too.
"""

from __future__ import annotations

import importlib
import math

import numpy as np

from easc.ir import Graph, run

from .base import Pass, PassError, PassResult


class _ModulePass(Pass):
    """A pass whose rewrite is the function `function` of module `passes.<module>`, looked up at call time."""

    module: str = ""
    function: str = ""

    def apply(self, graph, *, rng, **args) -> PassResult:
        rewrite = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)
        return rewrite(graph, rng=rng, **args)


def _flow_nodes(graph: Graph, layer: str) -> list:
    """The nodes whose weights a widen of `layer` grows: its coupled sources, the channel-wise ops on the
    way and the consumers (see `channels.trace_channels`)."""
    from .channels import trace_channels

    flow = trace_channels(graph, layer)
    names = dict.fromkeys([*flow.sources, *flow.consumers, *flow.segments])
    return [graph.node(n) for n in names]


def _widen_growth(graph: Graph, layer: str, width) -> int | None:
    """Upper bound on the parameters widening `layer` to `width` adds: every weight on its channel flow
    scaled by width / n (sources grow rows, consumers columns, batchnorms entries, all by that ratio)."""
    try:
        n = graph.node(layer).width
        nodes = _flow_nodes(graph, layer)
        width = float(width)
    except Exception:  # noqa: BLE001 - no estimate; the pass itself says what is wrong
        return None
    if not (n and width > n and math.isfinite(width)):
        return None
    return int(sum(node.params for node in nodes) * (width - n) / n) + 1


class Widen(_ModulePass):
    name = "widen"
    module, function = "widen", "widen"
    arguments = ("layer", "width", "noise")

    def candidates(self, graph: Graph) -> list:
        from .widen import widenable_layers

        return [{"layer": layer} for layer in widenable_layers(graph)]

    def reason(self, graph: Graph, layer: str, width=None, **args) -> str | None:
        from .widen import widen_reason

        why = widen_reason(graph, layer)
        if why is None and width is not None:
            return super().reason(graph, layer=layer, width=width, **args)
        return why

    def added_params(self, graph, layer=None, width=None, **args):
        return _widen_growth(graph, layer, width)


def _many_growth(graph: Graph, layers, factor) -> int | None:
    """The parameters `widen_many` adds, counted from the widths alone: a value carrying flows' channels grows
    by (m - n) * block columns per place; a source's or channel-wise op's weights grow by their output's, a
    consumer's by its input's (both, for a layer that is the one and the other)."""
    from .channels import trace_channels

    try:
        factor = float(factor)
        extra: dict = {}
        sources, consumers, covered = set(), set(), set()
        for layer in layers:
            if layer in covered:
                continue
            flow = trace_channels(graph, layer)
            covered.update(flow.sources)
            grow = math.ceil(flow.width * factor) - flow.width
            for value, facts in flow.segments.items():
                extra[value] = extra.get(value, 0) + sum(grow * f.block for f in facts)
            sources.update(flow.sources)
            consumers.update(flow.consumers)
    except Exception:  # noqa: BLE001 - no estimate; the pass itself says what is wrong
        return None
    added = 0
    for name in set(extra) | sources | consumers:
        node = graph.node(name)
        rows = extra.get(name, 0) if name in sources or name in extra else 0
        cols = extra.get(node.inputs[0], 0) if name in consumers else 0
        for key, w in node.weights.items():
            if key in ("mean", "var"):  # running statistics: not parameters (`Node.params`)
                continue
            shape = list(w.shape)
            shape[0] += rows
            if len(shape) > 1:
                shape[1] += cols
            added += math.prod(shape) - w.size
    return added


class WidenMany(_ModulePass):
    name = "widen_many"
    module, function = "widen", "widen_many"
    arguments = ("layers", "factor")

    def candidates(self, graph: Graph) -> list:
        from .widen import many_reason, widenable_layers

        layers = [layer for layer in widenable_layers(graph) if many_reason(graph, layer) is None]
        return [{"layers": layers}] if layers else []

    def added_params(self, graph, layers=(), factor=2.0, **args):
        return _many_growth(graph, layers, factor)


class Deepen(_ModulePass):
    name = "deepen"
    module, function = "deepen", "deepen"
    arguments = ("after", "kernel", "calibration")

    def candidates(self, graph: Graph) -> list:
        from .deepen import deepenable

        return [{"after": name} for name in deepenable(graph)]

    def added_params(self, graph, after=None, kernel=3, **args):
        if after not in graph or isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)):
            return None
        t = graph.node(after).type
        c = t.channels if t.rank in (2, 4) else 0
        k = int(kernel) ** 2 if t.rank == 4 else 1
        return c * c * k + 3 * c


class Skip(_ModulePass):
    name = "skip"
    module, function = "skip", "skip"
    arguments = ("src", "dst", "pool")

    def candidates(self, graph: Graph) -> list:
        from .skip import skip_candidates

        return [{"src": s, "dst": d} for s, d in skip_candidates(graph)]

    def reason(self, graph, src=None, dst=None, pool="avg", **args) -> str | None:
        from .skip import _plan

        try:
            _plan(graph, src, dst, pool)
        except PassError as e:
            return str(e)
        return None


class WidenKernel(_ModulePass):
    name = "widen_kernel"
    module, function = "widen_kernel", "widen_kernel"
    arguments = ("layer", "kernel")

    def candidates(self, graph: Graph) -> list:
        from .widen_kernel import kernel_widenable

        return [{"layer": layer} for layer in kernel_widenable(graph)]

    def added_params(self, graph, layer=None, kernel=None, **args):
        if layer not in graph or graph.node(layer).op != "conv2d":
            return None
        node = graph.node(layer)
        kh, kw = node.attrs["kernel"]
        try:
            th, tw = (kh + 2, kw + 2) if kernel is None else (
                (int(kernel),) * 2 if np.isscalar(kernel) else tuple(int(k) for k in kernel))
        except (TypeError, ValueError, OverflowError):
            return None
        return int(node.weights["weight"].size * max(th * tw - kh * kw, 0) / (kh * kw))


class DenseWiden(_ModulePass):
    name = "dense_widen"
    module, function = "dense", "dense_widen"
    arguments = ("layer", "growth", "bottleneck", "noise")

    def candidates(self, graph: Graph) -> list:
        from .dense import dense_layers

        return [{"layer": layer} for layer in dense_layers(graph)]

    def added_params(self, graph, layer=None, growth=None, **args):
        from .dense import BOTTLENECK_FACTOR, dense_layers

        dl = dense_layers(graph).get(layer)
        if dl is None:
            return None
        grow = _widen_growth(graph, layer, growth)
        if grow is None:
            return None
        if dl.bottleneck is not None and args.get("bottleneck", True):
            grow += _widen_growth(graph, dl.bottleneck, BOTTLENECK_FACTOR * float(growth)) or 0
        return grow


class DenseDeepen(_ModulePass):
    name = "dense_deepen"
    module, function = "dense", "dense_deepen"
    arguments = ("after_layer", "calibration")

    def candidates(self, graph: Graph) -> list:
        from .dense import dense_layers

        return [{"after_layer": layer} for layer in dense_layers(graph)]


def registry() -> dict:
    """Every pass by name: instances of the pass protocol (`base.Pass`)."""
    return {p.name: p for p in (Widen(), WidenMany(), Deepen(), Skip(), WidenKernel(), DenseWiden(),
                                 DenseDeepen())}


def apply_pass(graph: Graph, name: str, *, rng: np.random.Generator | None = None, probes: dict | None = None,
               executor=run, numeric: bool = True, **kwargs) -> PassResult:
    """Run pass `name` on `graph` with `kwargs`, then verify it (raises on any failure).

    A one-pass `PassManager`: the verifier, the signature, then the numeric check of the rewritten region
    (reference interpreter, float64). With another `executor` (onnxruntime, say) the check compares the
    whole graph's outputs through it instead; `numeric=False` checks structure only.
    """
    from .manager import PassManager

    check = "structural" if not numeric else ("local" if executor is run else "full")
    return PassManager(graph, rng=rng, probes=probes, executor=executor, check=check).run(name, **kwargs)


def widen_all(graph: Graph, factor: float, *, rng=None, probes=None, executor=run, noise: float = 0.0,
              manager=None) -> list:
    """Widen every widenable layer to ceil(width * factor): one checked `widen_many` per group of layers read
    together (`iter_widen_all`), one checked `widen` for each other layer.

    Layers coupled through a residual add are widened together by the first of them, so the later
    ones are already at their target width and are skipped. With `manager` the passes run in it (its
    generator, probes and checks); otherwise in a manager of their own.
    """
    from .manager import PassManager

    if not factor > 1:
        raise PassError(f"--factor must be greater than 1, got {factor}")
    if manager is None:
        check = "local" if executor is run else "full"
        manager = PassManager(graph, rng=rng, probes=probes, executor=executor, check=check)
    return list(iter_widen_all(manager, factor, noise=noise))


def iter_widen_all(manager, factor: float, noise: float = 0.0):
    """`widen_all` one result at a time, so a caller that reports and drops each keeps no old graphs.

    Without noise, layers whose channels meet in common consumers (a dense block, an inception module:
    `widen.shared_readers`) are widened together by one `widen_many` per group, which gathers each such consumer
    once instead of once per layer it reads; every other layer by one `widen` (a chain of passes holds only the
    current graph, where one pass over the whole graph would hold its input and its output at once)."""
    from .widen import many_reason, nearest_valid_width, shared_readers, widenable_layers

    graph = manager.graph
    targets = {name: nearest_valid_width(graph, name, math.ceil(graph.node(name).width * factor))
               for name in widenable_layers(graph)}
    if not targets:
        raise PassError("no layer of this graph can be widened (layers that reach an output cannot)")
    groups = [] if noise else [group for group in shared_readers(graph, [name for name in targets
                                                                        if many_reason(graph, name) is None])
                               if len(group) > 1]
    del graph
    for group in groups:
        yield manager.run("widen_many", layers=group, factor=factor)
    for name, width in targets.items():
        if manager.graph.node(name).width >= width:
            continue
        yield manager.run("widen", layer=name, width=width, noise=noise)
