"""The pass manager: one object runs every chain of passes, and owns what the chain shares.

    manager = PassManager(graph, seed=0)                 # generator, probes, check policy, instrumentation
    manager.run("widen", layer="conv_3", width=96)       # apply + verify; manager.graph is the result
    manager.run("deepen", after="relu_2")
    manager.finish(reference)                            # the end-to-end check, once, at the end of the chain

What it owns:
- the random generator the passes draw from (seeded once per chain, so a chain is reproducible);
- the probe set (`ProbeSet`): seeded probe inputs, and the activations of the current graph on them;
- the check policy, after every pass (`check=`):
    "local"       (default) the structural verifier on what changed (`verify(graph, since=before)`), the
                  signature, then the numeric check of the rewritten region (`local_check.check_region`:
                  float64 reference interpreter, from the cached activations at the region's inputs to
                  the first values where old and new graphs agree again, within PRESERVATION_RTOL);
    "full"        the verifier, then every output of the whole graph through `executor` (`base.checked`);
    "structural"  the verifier and the signature only;
- the end-to-end check (`finish`): the chain's reference outputs (the user's original model, run by the
  caller's oracle, or the start graph's) against the final graph through `executor`, within
  PRESERVATION_RTOL plus the stated tolerance of every pass that added noise on purpose;
- the refusal policy (`on_refusal=`): "raise" a `PassError`, or "skip" the action (the result carries the
  unchanged graph and `skipped`, the reason): the search's "skip the action on PassError", written once;
- a size limit (`max_params=`): a pass whose result would have more parameters (by the pass's own upper
  bound, `Pass.added_params`) is refused with a `SizeLimitError` before anything is allocated;
- instrumentation: `stats`, one `PassStats` per pass run (seconds in the pass and in its check, nodes it
  rewrote, nodes the check evaluated, lines of changes).

Memory follows the output: the manager holds the current graph only (passes share every untouched
node, and so every untouched weight, with their input), the probe activations of the current graph
(kept weakly, by graph), and the start graph's outputs, not the start graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from easc.ir import Graph, probe_inputs, run, verify

from .base import (PRESERVATION_RTOL, PROBE_BATCH, FunctionNotPreservedError, PassError, PassResult, ProbeSet,
                   checked, output_difference, signature)
from .local_check import check_region, identity_diff

CHECKS = ("local", "full", "structural")
FLOAT32_MARGIN = 4.0
"""How many times the start graph's own float32 rounding the end-to-end check of two float32 runs allows on top
of PRESERVATION_RTOL (`PassManager.finish`): twice for each of the two runs."""
REFUSALS = ("raise", "skip")


class SizeLimitError(PassError):
    """A pass would make the model larger than the manager's `max_params`; nothing was allocated."""


@dataclass
class PassStats:
    """What one pass run cost and did (the manager's instrumentation)."""

    name: str
    seconds: float = 0.0
    check_seconds: float = 0.0
    rewritten: int = 0
    evaluated: int = 0
    changes: int = 0
    skipped: str | None = None


class PassManager:
    """Runs passes on a current graph with one generator, one probe set, one check policy (module doc)."""

    def __init__(self, graph: Graph, *, rng: np.random.Generator | None = None, seed: int = 0,
                 probes: dict | None = None, check: str = "local", executor=run, passes: dict | None = None,
                 on_refusal: str = "raise", max_params: int | None = None):
        from .pipeline import registry

        if check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}, not {check!r}")
        if on_refusal not in REFUSALS:
            raise ValueError(f"on_refusal must be one of {', '.join(REFUSALS)}, not {on_refusal!r}")
        self.graph = graph
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        if not isinstance(probes, ProbeSet):
            probes = ProbeSet(probes if probes is not None else probe_inputs(graph, PROBE_BATCH, seed))
        self.probes = probes
        self.check = check
        self.executor = executor
        self.passes = passes if passes is not None else registry()
        self.on_refusal = on_refusal
        self.max_params = max_params
        self.stats: list = []
        self.noise_tolerance = 0.0  # sum of the stated tolerances of the passes that added noise
        self._start_outputs = None
        self._start = graph  # dropped once its outputs are known (memory follows the output)
        self.float32_rounding = None  # set by `finish` when it measured the start graph's float32 rounding

    # -- running passes ------------------------------------------------------------------------
    def pass_named(self, name: str):
        if name not in self.passes:
            raise PassError(f"unknown pass {name!r} (passes: {', '.join(self.passes)})")
        return self.passes[name]

    def candidates(self, name: str) -> list:
        """Where pass `name` applies on the current graph (argument dicts)."""
        return self.pass_named(name).candidates(self.graph)

    def reason(self, name: str, **args) -> str | None:
        """Why pass `name` would refuse `args` on the current graph, or None."""
        return self.pass_named(name).reason(self.graph, **args)

    def run(self, name: str, **args) -> PassResult:
        """Apply pass `name` to the current graph, check it, and make its result the current graph.

        Raises `PassError` (refused; with on_refusal="skip" returns a result with `skipped` instead),
        `VerificationError` / `FunctionNotPreservedError` (the pass broke the graph or the function).
        """
        p = self.pass_named(name)
        before = self.graph
        stats = PassStats(name)
        start = time.perf_counter()
        try:
            self._check_size(p, before, args)
            result = p.apply(before, rng=self.rng, **args)
        except PassError as e:
            if self.on_refusal == "raise":
                raise
            stats.skipped, stats.seconds = str(e), time.perf_counter() - start
            self.stats.append(stats)
            return PassResult(before, record={"pass": name, **_jsonable(args)}, skipped=str(e))
        checked_at = time.perf_counter()
        stats.seconds = checked_at - start
        self._remember_start()
        stats.evaluated = self._verify(before, result, name)
        stats.check_seconds = time.perf_counter() - checked_at
        stats.rewritten = len(result.rewritten) if result.rewritten is not None else 0
        stats.changes = len(result.changes)
        if not result.exact:
            self.noise_tolerance += float(result.tolerance or 0.0)
        self.graph = result.graph
        self.stats.append(stats)
        return result

    def _check_size(self, p, graph: Graph, args: dict) -> None:
        if self.max_params is None:
            return
        added = p.added_params(graph, **args)
        if added is not None and graph.params + added > self.max_params:
            shown = ", ".join(f"{k}={v}" for k, v in args.items() if k != "calibration")
            raise SizeLimitError(f"{p.name} {shown}: the result would have about {graph.params + added:.3g} "
                                 f"parameters, over the limit of {self.max_params:.3g} (--max-params)")

    def _verify(self, before: Graph, result: PassResult, what: str) -> int:
        """The check policy after pass `what`; returns the number of nodes the numeric check evaluated."""
        after = result.graph
        if self.check == "full":
            checked(before, result, self.probes, self.executor)
            return len(after)
        verify(after, since=before)
        if signature(before) != signature(after):
            raise FunctionNotPreservedError(f"{what} changed the graph's inputs or outputs: "
                                            f"{signature(before)} -> {signature(after)}")
        if self.check == "structural":
            return 0
        if result.rewritten is None:
            result.rewritten = identity_diff(before, after)
        rtol = PRESERVATION_RTOL if result.exact else max(PRESERVATION_RTOL, float(result.tolerance or 0.0))
        activations, diff, scale, evaluated = check_region(before, after, self.probes.activations(before),
                                                           result.rewritten, rtol, what, result.exact,
                                                           copies=result.channels)
        self.probes.keep_activations(after, activations)
        result.max_diff, result.max_output = diff, scale
        return evaluated

    # -- the end of a chain --------------------------------------------------------------------
    def _remember_start(self) -> None:
        """The start graph's outputs on the probes, then let the start graph go."""
        if self._start is None:
            return
        if self.check == "local":
            acts = self.probes.activations(self._start)  # needed by the first local check anyway
            self._start_outputs = {p: acts[n] for p, n in self._start.outputs.items()}
        elif self.check == "full":
            self._start_outputs = self.probes.outputs(self._start, self.executor)  # the check needs them too
        else:
            return  # structural checks only: keep the start graph, `finish` runs it if asked
        self._start = None

    def finish(self, reference: dict | None = None, executor=None, start_float32=None) -> tuple:
        """The end-to-end check of the chain: (max |difference|, max |reference output|).

        reference:     outputs of the chain's original model on `self.probes` (keyed by public output name),
                       e.g. the user's file run by onnxruntime; default: the start graph's outputs.
        executor:      runs the final graph (default: the manager's executor).
        start_float32: for a float32 `reference` and `executor` (onnxruntime): a callable returning the start
                       graph's outputs on the probes computed in float32 (`float32_outputs`), called only when
                       the difference exceeds the tolerance of exact arithmetic (below).
        Raises `FunctionNotPreservedError` beyond PRESERVATION_RTOL plus the chain's noise tolerance, plus, when
        `start_float32` is given, FLOAT32_MARGIN times the start graph's own float32 rounding.

        Why the margin: two float32 runs of the same function differ by their rounding, and on a deep network
        with large activations that rounding alone exceeds PRESERVATION_RTOL at the outputs (a ResNet-50 with
        calibrated batchnorms: its float32 outputs are 2.6e-5 of their scale off its float64 ones, in easc's
        interpreter and in onnxruntime alike), so a chain of exact passes failed the check it passed in float64.
        The rounding is measured on the start graph, the original's own function (float32 against float64 on
        the same probes, by the interpreter, without onnxruntime or the file, so an importer that misread the
        file cannot widen it), and the margin allows it for both the original's run and the result's, whose
        sums may be longer (a widened layer: twice the terms). The local checks, in float64, are unaffected.
        """
        executor = executor or self.executor
        if reference is None:
            self._remember_start()
            reference = self._start_outputs if self._start is None else self.probes.outputs(self._start, executor)
        # the caller may have let the graph go (its exported bytes are what `executor` runs)
        final = executor(None, dict(self.probes)) if self.graph is None else self.probes.outputs(self.graph, executor)
        missing = [k for k in reference if k not in final]
        if missing:
            raise FunctionNotPreservedError(f"end to end: the final model has no output {missing[0]!r}")
        diff, scale = output_difference(reference, final)
        allowed = (PRESERVATION_RTOL + self.noise_tolerance) * (1 + scale)
        self.float32_rounding = None
        if not diff <= allowed and start_float32 is not None and self._start_outputs is not None:
            self.float32_rounding, _ = output_difference(self._start_outputs, start_float32())
            allowed += FLOAT32_MARGIN * self.float32_rounding
        if not diff <= allowed:
            rounding = ("" if self.float32_rounding is None else
                        f" (of which {FLOAT32_MARGIN:g} x {self.float32_rounding:.3g} for float32 rounding)")
            raise FunctionNotPreservedError(
                f"end to end: the final model did not preserve the original's function: max |difference| "
                f"{diff:.3g} > allowed {allowed:.3g}{rounding}")
        return diff, scale

    def summary(self) -> str:
        """One line per pass: time in the pass and in its check, region size (for profiling)."""
        lines = []
        for s in self.stats:
            if s.skipped is not None:
                lines.append(f"{s.name}: skipped ({s.skipped})")
            else:
                lines.append(f"{s.name}: {s.seconds * 1e3:.1f} ms pass, {s.check_seconds * 1e3:.1f} ms check, "
                             f"{s.rewritten} nodes rewritten, {s.evaluated} evaluated, {s.changes} changes")
        return "\n".join(lines)


def _jsonable(args: dict) -> dict:
    """The arguments of a skipped action as a record (calibration arrays are not recorded)."""
    return {k: v for k, v in args.items() if k != "calibration"}
