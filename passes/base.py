"""What every pass shares: its result record, its error type, the pass protocol, the probe set, and the
whole-graph check.

A pass is a function `graph, ..., rng -> PassResult`, wrapped by an object of the `Pass` protocol
(`pipeline.registry()`). It never changes its input graph (graphs are immutable; a pass builds a new one
that shares every node it did not touch), keeps no module-level state, takes randomness only from the
explicit `numpy.random.Generator` it is given, says which nodes it rewrote, and refuses with a `PassError`
that says why when its preconditions do not hold.

After every pass a `PassManager` (`manager.py`) runs its check policy; by default the numeric check of the
rewritten region only (`local_check.py`). `checked(...)` is the whole-graph check (the manager's "full"
policy, and the independent oracle of the property tests): the structural verifier, then a check that the
input and output signatures are unchanged, then a numeric check on seeded probe inputs in eval mode:

    max |f_after(x) - f_before(x)|  <=  PRESERVATION_RTOL * (1 + max |f_before(x)|)

PRESERVATION_RTOL is 1e-5: the weights are float32 (about 6e-8 relative rounding per operation),
and a rewritten layer sums over at most a few thousand terms whose rounding errors stay below 1e-5
relative; the reference interpreter itself computes in float64, so it adds nothing measurable.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from easc.ir import Graph, IRError, probe_inputs, run, verify
from easc.ir.interpret import input_value

PRESERVATION_RTOL = 1e-5
"""Relative tolerance of the function-preservation check for noise-free passes (see module doc)."""

PROBE_BATCH = 4
"""Probe inputs per check: enough to exercise batch statistics-free eval mode, cheap to run."""


class PassError(IRError):
    """A pass refused: its preconditions do not hold. The message says why and what would work."""


class FunctionNotPreservedError(IRError):
    """A pass ran but its result does not compute the same function (beyond the tolerance)."""


@dataclass
class PassResult:
    """A pass's new graph and a record of what it did.

    changes:   human-readable lines, one per edit ("conv_3: 16 -> 32 channels", ...)
    record:    the pass name and its arguments, JSON-serialisable (the search stores it as an action)
    exact:     False only when the pass adds noise on purpose (then `tolerance` says how far it may go)
    max_diff:  the measured verification figure, filled in by the check
    rewritten: names of the nodes of the new graph the pass created or changed (the region the local
               check evaluates); None means "not declared", and the manager computes it
    skipped:   set (with `graph` the unchanged input) when a manager with the skip policy met a refusal
    channels:  for a pass that regathers channels (widen): value name -> for each of its new channels (axis 1),
               the old channel it copies; values not listed kept their channels
    """

    graph: Graph
    changes: list = field(default_factory=list)
    record: dict = field(default_factory=dict)
    exact: bool = True
    tolerance: float | None = None
    max_diff: float | None = None
    max_output: float | None = None
    rewritten: frozenset | None = None
    skipped: str | None = None
    channels: dict | None = None

    def action(self) -> dict:
        """The record the search stores: the pass and its arguments, and its check's figure or why it was skipped."""
        if self.skipped is not None:
            return {**self.record, "skipped": self.skipped}
        return {**self.record, "max_diff": self.max_diff}


class Pass:
    """The pass protocol: what a pass takes, where it applies, why not, and what it does.

    arguments:             the keyword arguments `apply` takes (besides `rng`)
    candidates(graph):     argument dicts naming every place the pass applies, in graph order (the
                           arguments that say *where*; the others keep their defaults)
    reason(graph, **args): why `apply` would refuse these arguments, or None when it accepts them
    apply(graph, rng=, **args) -> PassResult: the rewrite; never changes `graph`; `rewritten` filled in
    added_params(graph, **args): an upper bound on the parameters the rewrite adds (None: not estimated),
                           so that a manager can refuse an absurd request before allocating it
    """

    name: str = ""
    arguments: tuple = ()

    def candidates(self, graph: Graph) -> list:
        raise NotImplementedError

    def reason(self, graph: Graph, **args) -> str | None:
        try:
            self.apply(graph, rng=np.random.default_rng(0), **args)
        except PassError as e:
            return str(e)
        return None

    def apply(self, graph: Graph, *, rng: np.random.Generator, **args) -> PassResult:
        raise NotImplementedError

    def added_params(self, graph: Graph, **args) -> int | None:
        return None


Executor = Callable[[Graph, dict], dict]


def signature(graph: Graph) -> tuple:
    """The graph's interface: input names and types, output names and types."""
    ins = tuple((n.name, str(n.type)) for n in graph.inputs)
    outs = tuple((o, str(graph.node(n).type)) for o, n in graph.outputs.items())
    return ins, outs


class ProbeSet(dict):
    """Probe inputs that remember each graph's outputs, and activations, on them.

    Graphs are immutable, so a graph's outputs on fixed probes never change. In a chain of passes the
    graph after one pass is the graph before the next: with a ProbeSet its outputs are computed once,
    which halves the numeric check of every pass but the first. The local check (`local_check`) keeps
    the current graph's probe values here too (those of its layers; the rest computed when read), and derives
    the next graph's from them. The memory
    lives and dies with the graphs (weak references), so nothing outlives the chain that made it.
    """

    def __init__(self, feeds: dict):
        super().__init__(feeds)
        self._outputs = weakref.WeakKeyDictionary()
        self._activations = weakref.WeakKeyDictionary()

    def outputs(self, graph: Graph, executor: Executor) -> dict:
        per_graph = self._outputs.setdefault(graph, {})
        if executor not in per_graph:
            # never from the cached activations: after a local check those hold the chain's reference
            # values where old and new graphs agree, and an end-to-end check must run the graph itself
            per_graph[executor] = executor(graph, dict(self))
        return per_graph[executor]

    def activations(self, graph: Graph) -> dict:
        """The nodes' values on the probes (the reference interpreter, float64, kept as float32), computed
        once per graph: `local_check.Activations`, those of `local_check.kept_values` stored, the others
        computed from them when read."""
        if graph not in self._activations:
            from .local_check import Activations, kept_values

            values = _all_activations(graph, dict(self), kept_values(graph))
            self._activations[graph] = Activations(graph, values, set(graph._index) - set(values))
        return self._activations[graph]

    def forget_activations(self) -> None:
        """Let every cached activation go (a chain that is done checking locally needs none)."""
        self._activations.clear()

    def has_activations(self, graph: Graph) -> bool:
        return graph in self._activations

    def keep_activations(self, graph: Graph, activations: dict) -> None:
        self._activations[graph] = activations


def _all_activations(graph: Graph, feeds: dict, keep=None, dtype=np.float64) -> dict:
    """The values on `feeds` of the nodes in `keep` (default: all), kept as float32, computed in `dtype` (float64,
    like `run_all`), but a computed value is let go as soon as its last reader has been evaluated: the float64
    copy of every activation at once (twice the float32 ones) was the largest allocation of a chain of small
    passes on a DenseNet."""
    from .local_check import _evaluate

    last = {}
    for k, node in enumerate(graph.nodes):
        for i in node.inputs:
            last[i] = k
    exact, values = {}, {}
    for k, node in enumerate(graph.nodes):
        if node.op == "input":
            value = input_value(node, feeds, dtype)
        else:
            value = _evaluate(node, [exact[i] for i in node.inputs])
        if keep is None or node.name in keep:
            values[node.name] = value.astype(np.float32)
        exact[node.name] = value
        for i in set(node.inputs):
            if last[i] == k:
                del exact[i]
        if node.name not in last:
            del exact[node.name]
    return values


def float32_outputs(graph: Graph, feeds: dict) -> dict:
    """The graph's outputs on `feeds` with every value computed in float32 (the interpreter's kernels compute in
    their input's type), keyed by public output name."""
    values = _all_activations(graph, feeds, set(graph.outputs.values()), np.float32)
    return {public: values[name] for public, name in graph.outputs.items()}


def _outputs(graph: Graph, probes: dict, executor: Executor) -> dict:
    return probes.outputs(graph, executor) if isinstance(probes, ProbeSet) else executor(graph, probes)


def max_output_difference(before: Graph, after: Graph, probes: dict | None = None,
                          executor: Executor = run) -> tuple:
    """(max |difference| of all outputs, max |output| of `before`) on the probe inputs."""
    probes = probes if probes is not None else probe_inputs(before, PROBE_BATCH)
    return output_difference(_outputs(before, probes, executor), _outputs(after, probes, executor))


def output_difference(reference: dict, other: dict) -> tuple:
    """(max |difference| over the outputs of `reference`, max |reference output|), in float64."""
    diff = max(float(np.max(np.abs(np.asarray(reference[k], np.float64) - np.asarray(other[k], np.float64))))
               for k in reference)
    scale = max(float(np.max(np.abs(np.asarray(reference[k], np.float64)))) for k in reference)
    return diff, scale


def checked(before: Graph, result: PassResult, probes: dict | None = None,
            executor: Executor = run, numeric: bool = True) -> PassResult:
    """Verify `result.graph` structurally and numerically against `before`; fill `max_diff`.

    Raises `VerificationError` (structure), `FunctionNotPreservedError` (numbers or signature).
    """
    what = result.record.get("pass", "pass")
    verify(result.graph, since=before)  # what the pass shared with `before` was verified there
    if signature(before) != signature(result.graph):
        raise FunctionNotPreservedError(f"{what} changed the graph's inputs or outputs: "
                                        f"{signature(before)} -> {signature(result.graph)}")
    if not numeric:
        return result
    diff, scale = max_output_difference(before, result.graph, probes, executor)
    result.max_diff, result.max_output = diff, scale
    allowed = PRESERVATION_RTOL * (1 + scale) if result.exact else (result.tolerance or 0.0) * (1 + scale)
    if not diff <= allowed:
        raise FunctionNotPreservedError(
            f"{what} did not preserve the function: max |difference| {diff:.3g} > allowed {allowed:.3g}")
    return result


def owned(array: np.ndarray) -> np.ndarray:
    """A weight array a pass just made, sealed read-only: the new node takes it without a defensive copy (for
    the 1024 x 1024 x 3 x 3 identity conv of a deepen, a 38 MB copy)."""
    array.flags.writeable = False
    return array


def default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(0)
