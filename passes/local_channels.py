"""The local check on the channels a rewrite touched: a concatenation's readers cost what changed, not its width.

Widening or deepening one layer of a dense block changes the channel count of every later concatenation of the
block: the new concatenation is the old one with the layer's channels replaced (`g` old channels by `g'` new
ones, or `g'` new ones inserted), every other channel the old value itself. Evaluating the later layers whole
(concatenation, batchnorm, relu, first conv over all C channels) costs every later layer of the block on every
check; this module evaluates only the channels that changed and proves the others equal.

A value of the new graph whose type changed is kept as a `Patch` of the old graph's value of the same node:

    new[:, n:n+l] == old[:, o:o+l]      for each run (n, o, l) of `runs`    (exactly: the very cached values)
    new[:, index]  = values              the touched channels, computed (float64)

and the rules that keep it one are exact statements, checked, never assumed:
- concat (same inputs as the old node): an unchanged input is a run; a patched input's runs are shifted; a
  changed input is touched whole.
- a per-channel op (batchnorm, the activations, pools, identity; same op, inputs and attributes as the old
  node): channel c of its output depends on channel c of its input and the op's own parameters at c only, so
  a run stays a run when the parameters on the run are *bitwise* equal to the old node's on the matching old
  channels; the touched channels are computed with the parameters gathered at them.
- flatten: channel c becomes features [c*S, (c+1)*S) (S: the spatial size), runs and touched scale with it.
- a linear reader (conv2d with groups=1, linear; same op, inputs, attributes, bias and output type as the old
  node): it sums over input channels, so with its weights on every run bitwise equal to the old node's on the
  old channels (the same numbers times the same numbers cancel exactly),

      new_out - old_out  =  f(new[:, T_new], W_new[:, T_new])  -  f(old[:, T_old], W_old[:, T_old])

  (T: the channels outside the runs, bias left out of both), which is computed and compared with the old
  output's scale as the whole-value check compares `new_out - old_out`. Its output then agrees, as there.
- a widened layer (conv2d with groups=1, linear) reading unchanged values, whose every output row (weights
  and bias) is *bitwise* the row index[j] of the old node (index: the pass's `PassResult.channels` for it,
  used as a claim and checked): its output channel j is the old output channel index[j], the same products
  of the same numbers, so its new value is the old one gathered, and the layer is not evaluated
  (`copied_rows`).
Anything else that reads a patch, or a rule whose equalities do not hold (a pass that changed a weight it
should not have), gets the patch assembled into the whole new value and the ordinary evaluation: the fast path
only skips work whose result it has proven, so it can miss nothing the whole-value check would catch.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from easc.ir.interpret import eval_node
from easc.ir.kernels import conv2d_array

PER_CHANNEL = frozenset({"batchnorm", "relu", "clip", "leaky_relu", "sigmoid", "silu", "hardsigmoid", "hardswish",
                         "identity", "maxpool2d", "avgpool2d", "global_avgpool"})
"""Ops whose output channel c reads input channel c and their own parameters at c only."""


class Patch:
    """A changed value as runs of the old value of the same node plus computed touched channels (module doc)."""

    __slots__ = ("shape", "runs", "index", "values")

    def __init__(self, shape: tuple, runs: list, index: np.ndarray, values: np.ndarray):
        self.shape, self.runs, self.index, self.values = shape, runs, index, values

    def old_index(self, old_channels: int) -> np.ndarray:
        """The old value's channels outside every run."""
        covered = np.zeros(old_channels, dtype=bool)
        for _, o, length in self.runs:
            covered[o:o + length] = True
        return np.flatnonzero(~covered)

    def assemble(self, old_value: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The whole new value, from the old one (`old_value`, the cached value of the same node)."""
        out = np.empty(self.shape, dtype=dtype)
        for n, o, length in self.runs:
            out[:, n:n + length] = old_value[:, o:o + length]
        out[:, self.index] = self.values
        return out


def _same_node(node, old) -> bool:
    return old is not None and old.op == node.op and old.inputs == node.inputs and dict(old.attrs) == dict(node.attrs)


def _runs_equal(new: np.ndarray, old: np.ndarray, runs: list, axis: int) -> bool:
    """Whether `new` on every run's new channels is bitwise `old` on its old channels (along `axis`)."""
    if len(runs) <= 8:  # compared as views, without a copy
        lead = (slice(None),) * axis
        return all(np.array_equal(new[lead + (slice(n, n + length),)], old[lead + (slice(o, o + length),)])
                   for n, o, length in runs)
    # many runs (a dense block's concatenation after earlier widens): one gather of each side, not a call per run
    new_index = np.concatenate([np.arange(n, n + length) for n, _, length in runs])
    old_index = np.concatenate([np.arange(o, o + length) for _, o, length in runs])
    return np.array_equal(np.take(new, new_index, axis=axis), np.take(old, old_index, axis=axis))


def concat(node, old, state, new_graph, old_graph) -> Patch | None:
    """A concatenation with at least one patched or changed input as a patch (None: not worth one / not one).

    state(name) -> None (unchanged: the cached value), a `Patch`, or an array (the whole new value)."""
    if not _same_node(node, old) or node.type == old.type:
        return None
    runs, index, values, n_off, o_off = [], [], [], 0, 0
    for name in node.inputs:
        c_new = new_graph.node(name).type.shape[1]
        c_old = old_graph.node(name).type.shape[1]
        s = state(name)
        if s is None and c_new != c_old:  # a changed type the pass did not declare: the whole-value path
            return None
        if s is None:
            runs.append((n_off, o_off, c_new))
        elif isinstance(s, Patch):
            runs.extend((n_off + n, o_off + o, length) for n, o, length in s.runs)
            index.append(s.index + n_off)
            values.append(s.values)
        else:
            index.append(np.arange(n_off, n_off + c_new))
            values.append(s)
        n_off += c_new
        o_off += c_old
    if not runs or not values:
        return None
    merged = [runs[0]]  # adjacent runs as one: fewer, longer comparisons of weights downstream
    for n, o, length in runs[1:]:
        n0, o0, l0 = merged[-1]
        if n == n0 + l0 and o == o0 + l0:
            merged[-1] = (n0, o0, l0 + length)
        else:
            merged.append((n, o, length))
    return Patch((values[0].shape[0],) + tuple(node.type.shape[1:]), merged, np.concatenate(index),
                 np.concatenate(values, axis=1))


def per_channel(node, old, patch: Patch) -> Patch | None:
    """A per-channel op on a patch as a patch, if its parameters on the runs are the old node's (else None)."""
    if node.op not in PER_CHANNEL or not _same_node(node, old) or node.type.shape[2:] != old.type.shape[2:]:
        return None
    if set(node.weights) != set(old.weights):
        return None
    for key, w in node.weights.items():
        if w.ndim != 1 or not _runs_equal(w, old.weights[key], patch.runs, 0):
            return None
    values = on_channels(node, patch.index, patch.values)
    return Patch((patch.shape[0],) + tuple(node.type.shape[1:]), patch.runs, patch.index, values)


def on_channels(node, index: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel op's value on channels `index` of its input, given those channels `x`: the op with its
    parameters gathered at `index`."""
    sliced = SimpleNamespace(name=node.name, op=node.op, attrs=node.attrs, type=node.type,
                             weights={k: w[index] for k, w in node.weights.items()})
    return eval_node(sliced, [x])


def flatten(node, old, patch: Patch) -> Patch | None:
    """flatten of a patched NCHW value: channel c -> features [c*S, (c+1)*S)."""
    if node.op != "flatten" or not _same_node(node, old) or len(patch.shape) < 3:
        return None
    s = math.prod(patch.shape[2:])
    runs = [(n * s, o * s, length * s) for n, o, length in patch.runs]
    index = (patch.index[:, None] * s + np.arange(s)).ravel()
    return Patch((patch.shape[0], patch.shape[1] * s), runs, index,
                 patch.values.reshape(patch.values.shape[0], -1))


def linear_delta(node, old, patch: Patch, old_input: np.ndarray) -> np.ndarray | None:
    """`new_out - old_out` of a linear reader of a patch from the touched channels only (module doc), or None
    when the rule does not apply (then the caller evaluates the node whole).

    old_input: (channels) -> those channels of the cached old value of the node's input (float64), called
               only when the patch replaced old channels.
    """
    if node.op not in ("conv2d", "linear") or not _same_node(node, old) or node.type != old.type:
        return None
    if node.op == "conv2d" and node.attrs["groups"] != 1:
        return None
    w_new, w_old = node.weights["weight"], old.weights["weight"]
    bias_new, bias_old = node.weights.get("bias"), old.weights.get("bias")
    if (bias_new is None) != (bias_old is None) or (bias_new is not None and not np.array_equal(bias_new, bias_old)):
        return None
    if not _runs_equal(w_new, w_old, patch.runs, 1):
        return None
    old_index = patch.old_index(w_old.shape[1])
    x_old = old_input(old_index) if len(old_index) else None
    a = w_new[:, patch.index].astype(np.float64)
    b = w_old[:, old_index].astype(np.float64)
    if node.op == "linear":
        new = patch.values @ a.T
        return new if x_old is None else new - x_old @ b.T
    new = _conv(node, patch.values, a)
    return new if x_old is None else new - _conv(node, x_old, b)


def _conv(node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The contribution of some input channels to a conv2d's output, bias left out."""
    at = node.attrs
    return conv2d_array(x, w, None, at["stride"], at["padding"], at["dilation"], 1)


ROWS = 1 << 20
"""Weights compared at a time by `copied_rows` (a gathered copy of the old rows is made to compare against)."""


def copied_rows(node, old, index, clean: bool) -> bool:
    """Whether `node`, a widened layer whose inputs hold their old values (`clean`), has as output row j
    exactly the old node's row index[j] (weights and bias, bitwise): then its value is the old value gathered
    by `index` (module doc)."""
    if index is None or not clean or old is None or node.op not in ("conv2d", "linear") or old.op != node.op:
        return False
    if old.inputs != node.inputs or len(index) != node.type.shape[1] or node.type.shape[2:] != old.type.shape[2:]:
        return False
    attrs, old_attrs = dict(node.attrs), dict(old.attrs)
    attrs.pop("out", None), old_attrs.pop("out", None)
    if attrs != old_attrs or attrs.get("groups", 1) != 1 or set(node.weights) != set(old.weights):
        return False
    index = np.asarray(index)
    if index.ndim != 1 or (len(index) and (index.min() < 0 or index.max() >= old.type.shape[1])):
        return False
    for key, w in node.weights.items():
        w_old = old.weights[key]
        if w.shape[1:] != w_old.shape[1:]:
            return False
        rows = max(1, ROWS // max(1, w[0].size))
        for start in range(0, len(index), rows):
            if not np.array_equal(w[start:start + rows], w_old[index[start:start + rows]]):
                return False
    return True
