"""The local check on the channels a rewrite touched: a concatenation's readers cost what changed, not its width.

Widening or deepening one layer of a dense block changes the channel count of every later concatenation of the
block: the new concatenation is the old one with the layer's channels replaced (`g` old channels by `g'` new
ones, or `g'` new ones inserted), every other channel the old value itself. Evaluating the later layers whole
(concatenation, batchnorm, relu, first conv over all C channels) costs every later layer of the block on every
check; this module evaluates only the channels that changed and proves the others equal.

A value of the new graph whose type changed is kept as a `Patch` of the old graph's value of the same node:

    new[:, n:n+l] == old[:, o:o+l]      for each run (n, o, l) of `runs`    (exactly: the very cached values)
    new[:, index]  = values              the touched channels, computed (float64)

Runs may repeat old channels: a widened layer's output, each copy an old channel, is a patch of runs only (a
*gather*, `Patch.gather`). The rules that keep a value a patch are exact statements, checked, never assumed:
- concat (same inputs as the old node): an unchanged input is a run; a patched input's runs are shifted; a
  changed input is touched whole.
- a per-channel op (batchnorm, the activations, pools, identity; same op, inputs and attributes as the old
  node): channel c of its output depends on channel c of its input and the op's own parameters at c only, so
  a run stays a run when the parameters on the run are *bitwise* equal to the old node's on the matching old
  channels; the touched channels are computed with the parameters gathered at them.
- add / mul of gathers with the same runs (a residual join after a widen): the same gather of the old result.
- flatten: channel c becomes features [c*S, (c+1)*S) (S: the spatial size), runs and touched scale with it.
- a linear reader (conv2d with groups=1, linear; same op, inputs, attributes, bias and output type as the old
  node): it sums over input channels. Grouping the channels its runs hold by the old channel c they hold, its
  new output is sum_c F[:, c] x_old[c] + W_new[:, T] v, with the fold F[:, c] the sum of its new weights'
  columns holding c (T, v: the touched channels and their values), so

      new_out - old_out  =  sum_c (F - W_old)[:, c] x_old[c]  +  f(v, W_new[:, T])

  (bias left out of both, the same), and every c where F is *bitwise* W_old contributes exactly nothing: a run
  whose weights are the old ones (the same numbers times the same numbers cancel), Net2Wider's split columns
  W / k on k copies (exactly W for k a power of two). The rest is computed and compared with the old output's
  scale as the whole-value check compares `new_out - old_out`; its output then agrees, as there. Folding costs
  a few passes over the weights whatever the positions, so below `FOLD_POSITIONS` a reader of copies is
  evaluated whole instead (a float64 product over few positions is the cheaper one).
- a widened layer (the same, its output rows grown) reading unchanged values or a patch: with the pass's claim
  rows (`PassResult.channels`: each new row's old row; used as a claim and checked), the same rule compares
  its rows' folds with the old rows W_old[rows] and its bias with theirs; when nothing differs beyond the
  tolerance, its new value is the old one gathered by `rows` (a gather), and the layer is not evaluated.
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
    """A changed value as runs of the old value of the same node plus computed touched channels (module doc).

    runs: an (k, 3) integer array of (n, o, l): new[:, n:n+l] is old[:, o:o+l]."""

    __slots__ = ("shape", "runs", "index", "values", "_held", "_folds")

    def __init__(self, shape: tuple, runs, index: np.ndarray, values: np.ndarray):
        self.shape, self.index, self.values = shape, index, values
        self.runs = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
        self._held = self._folds = None

    @staticmethod
    def gather(shape: tuple, index: np.ndarray) -> "Patch":
        """new[:, j] == old[:, index[j]] for every j: a value whose every channel is an old channel (a widened
        layer's output, proven), as runs of consecutive old channels and nothing computed."""
        index = np.asarray(index, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(index) != 1]) if len(index) else np.zeros(0, dtype=np.int64)
        runs = np.stack([starts, index[starts], np.diff(np.r_[starts, len(index)])], axis=1)
        return Patch(tuple(shape), runs, np.zeros(0, dtype=np.int64), np.empty((shape[0], 0) + tuple(shape[2:])))

    def held(self) -> tuple:
        """(new channels, old channels they hold): the runs channel by channel (worked out once)."""
        if self._held is None:
            n, o, length = self.runs.T
            within = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
            self._held = (np.repeat(n, length) + within, np.repeat(o, length) + within)
        return self._held

    def folds(self) -> bool:
        """Whether some old channel is held by more than one new channel (a widen's copies)."""
        if self._folds is None:
            _, old = self.held()
            self._folds = len(old) > 1 and int(np.bincount(old).max()) > 1
        return self._folds

    def same_runs(self, other: "Patch") -> bool:
        return np.array_equal(self.runs, other.runs) and not len(self.index) and not len(other.index)

    def reshaped(self, shape: tuple, values: np.ndarray) -> "Patch":
        """The same runs and touched channels with another shape (a per-channel op's output)."""
        out = Patch(shape, self.runs, self.index, values)
        out._held, out._folds = self._held, self._folds
        return out

    def old_index(self, old_channels: int) -> np.ndarray:
        """The old value's channels outside every run."""
        covered = np.zeros(old_channels, dtype=bool)
        covered[self.held()[1]] = True
        return np.flatnonzero(~covered)

    def assemble(self, old_value: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The whole new value, from the old one (`old_value`, the cached value of the same node)."""
        out = np.empty(self.shape, dtype=dtype)
        if len(self.runs) <= 8:
            for n, o, length in self.runs.tolist():
                out[:, n:n + length] = old_value[:, o:o + length]
        else:  # a widened layer's copies: one gather, not a copy per run
            new, old = self.held()
            out[:, new] = old_value[:, old]
        out[:, self.index] = self.values
        return out


def _same_node(node, old) -> bool:
    return old is not None and old.op == node.op and old.inputs == node.inputs and dict(old.attrs) == dict(node.attrs)


def _runs_equal(new: np.ndarray, old: np.ndarray, patch: "Patch", axis: int) -> bool:
    """Whether `new` on every run's new channels is bitwise `old` on its old channels (along `axis`)."""
    if len(patch.runs) <= 8:  # compared as views, without a copy
        lead = (slice(None),) * axis
        return all(np.array_equal(new[lead + (slice(n, n + length),)], old[lead + (slice(o, o + length),)])
                   for n, o, length in patch.runs.tolist())
    # many runs (a dense block's concatenation after earlier widens, a widened value's copies): one gather of
    # each side, not a call per run
    new_index, old_index = patch.held()
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
            runs.append(np.array([[n_off, o_off, c_new]]))
        elif isinstance(s, Patch):
            runs.append(s.runs + np.array([n_off, o_off, 0]))
            index.append(s.index + n_off)
            values.append(s.values)
        else:
            index.append(np.arange(n_off, n_off + c_new))
            values.append(s)
        n_off += c_new
        o_off += c_old
    runs = np.concatenate(runs) if runs else np.zeros((0, 3), dtype=np.int64)
    if not len(runs) or not values:
        return None
    # adjacent runs as one: fewer, longer comparisons of weights downstream (runs are in new-channel order)
    n, o, length = runs.T
    joins = np.r_[False, (n[1:] == n[:-1] + length[:-1]) & (o[1:] == o[:-1] + length[:-1])]
    first = np.flatnonzero(~joins)
    merged = np.stack([n[first], o[first], np.add.reduceat(length, first)], axis=1)
    return Patch((values[0].shape[0],) + tuple(node.type.shape[1:]), merged, np.concatenate(index),
                 np.concatenate(values, axis=1))


def elementwise(node, old, patches: list) -> Patch | None:
    """add / mul of values that are all the same gather of their old values (no touched channels): the same
    gather of the old result (elementwise, the same numbers in each place; a (N, C, 1, 1) gate broadcasts over
    the channel's positions alike)."""
    if node.op not in ("add", "mul") or not _same_node(node, old) or not patches:
        return None
    if any(p is None or not p.same_runs(patches[0]) for p in patches):
        return None
    return patches[0].reshaped((patches[0].shape[0],) + tuple(node.type.shape[1:]),
                               np.empty((patches[0].shape[0], 0) + tuple(node.type.shape[2:])))


def per_channel(node, old, patch: Patch) -> Patch | None:
    """A per-channel op on a patch as a patch, if its parameters on the runs are the old node's (else None).

    A depthwise conv is one: output channel c filters input channel c with filter c (and bias c) alone, so its
    filters are compared as the other ops' parameters are (its `out` and `groups`, the channel count, grow with
    the patch)."""
    if old is None or node.type.shape[2:] != old.type.shape[2:]:
        return None
    if _depthwise(node, patch.shape[1]) and _depthwise(old, old.type.shape[1]):
        attrs, old_attrs = dict(node.attrs), dict(old.attrs)
        for key in ("out", "groups"):
            attrs.pop(key), old_attrs.pop(key)
        if old.inputs != node.inputs or attrs != old_attrs:
            return None
    elif node.op not in PER_CHANNEL or not _same_node(node, old):
        return None
    if set(node.weights) != set(old.weights):
        return None
    for key, w in node.weights.items():
        if (w.ndim != 1 and node.op != "conv2d") or not _runs_equal(w, old.weights[key], patch, 0):
            return None
    values = (on_channels(node, patch.index, patch.values) if len(patch.index)
              else np.empty((patch.values.shape[0], 0) + tuple(node.type.shape[2:])))
    return patch.reshaped((patch.shape[0],) + tuple(node.type.shape[1:]), values)


def _depthwise(node, in_channels: int) -> bool:
    """A conv2d with one filter per input channel: groups = input channels = output channels."""
    return node.op == "conv2d" and node.attrs["groups"] == node.attrs["out"] == in_channels \
        and node.weights["weight"].shape[1] == 1


def on_channels(node, index: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel op's value on channels `index` of its input, given those channels `x`: the op with its
    parameters gathered at `index` (a depthwise conv: those filters, as many groups)."""
    attrs = dict(node.attrs, out=len(index), groups=len(index)) if node.op == "conv2d" else node.attrs
    sliced = SimpleNamespace(name=node.name, op=node.op, attrs=attrs, type=node.type,
                             weights={k: w[index] for k, w in node.weights.items()})
    return eval_node(sliced, [x])


def flatten(node, old, patch: Patch) -> Patch | None:
    """flatten of a patched NCHW value: channel c -> features [c*S, (c+1)*S)."""
    if node.op != "flatten" or not _same_node(node, old) or len(patch.shape) < 3:
        return None
    s = math.prod(patch.shape[2:])
    runs = patch.runs * s
    index = (patch.index[:, None] * s + np.arange(s)).ravel()
    return Patch((patch.shape[0], patch.shape[1] * s), runs, index,
                 patch.values.reshape(patch.values.shape[0], -1))


def linear_delta(node, old, patch: Patch, old_input, rows=None) -> np.ndarray | None:
    """`new_out - old_out` of a linear layer reading a patch, from the channels where they can differ only
    (module doc), or None when the rule does not apply (then the caller evaluates the node whole).

    old_input: (channels) -> those channels of the cached old value of the node's input (float64), called only
               for the channels whose weights do not cancel.
    rows:      for a widened layer, the old row each new row copies (the pass's claim): the difference is then
               new_out[:, r] - old_out[:, rows[r]], and bias and weights are compared with the old rows.

    Write src(j) for the old channel the patch's new channel j holds. The new output sums W'[:, j] x[src(j)] over
    the held channels and W'[:, T] v over the touched ones (T, values v); grouping the held channels by their
    old channel c, it is sum_c F[:, c] x[c] + W'[:, T] v with the fold F[:, c] = sum_{src(j) = c} W'[:, j]. So

        new_out - old_out  =  sum_c (F - W)[:, c] x_old[c]  +  W'[:, T] v,

    and every c where F equals W bitwise contributes exactly nothing: a run whose weights are the old ones, and
    Net2Wider's split columns, W / k on each of k copies (k a power of two: exact; W / 3 three times can miss W
    by an ulp, and that column is computed). F is summed in float64 from float32 weights, exact for the sums
    of a few equal numbers a widen makes (any other rounding is 1e-16 relative). Only the columns D where F
    differs from W, and the old columns no new channel holds (F = 0), are multiplied: a widen's copies read
    through every later layer of a dense block cost a comparison of weights, not a convolution."""
    if node.op not in ("conv2d", "linear") or old is None or old.op != node.op or old.inputs != node.inputs:
        return None
    attrs, old_attrs = dict(node.attrs), dict(old.attrs)
    if rows is None:
        if attrs != old_attrs or node.type != old.type:
            return None
    else:
        attrs.pop("out", None), old_attrs.pop("out", None)
        rows = np.asarray(rows)
        if attrs != old_attrs or node.type.shape[2:] != old.type.shape[2:] or rows.ndim != 1 \
                or rows.dtype.kind not in "iu" or len(rows) != node.type.shape[1] \
                or (len(rows) and (rows.min() < 0 or rows.max() >= old.type.shape[1])):
            return None
    if (node.op == "conv2d" and node.attrs["groups"] != 1) or set(node.weights) != set(old.weights):
        return None
    w_new, w_old = node.weights["weight"], old.weights["weight"]
    if w_new.shape[2:] != w_old.shape[2:] or w_new.shape[1] != patch.shape[1]:
        return None
    bias_new, bias_old = node.weights.get("bias"), old.weights.get("bias")
    if bias_new is not None and not np.array_equal(bias_new, bias_old if rows is None else bias_old[rows]):
        return None
    if patch.folds() and math.prod(node.type.shape[2:]) * patch.shape[0] < FOLD_POSITIONS:
        return None  # a product over so few positions costs less than folding the weights
    groups = _by_old_channel(patch)
    differ = _differing_columns(w_new, w_old, rows, patch, groups)
    if not len(differ) and not len(patch.index):
        return np.zeros(0)  # every product cancels: exactly no difference
    x_old = old_input(differ) if len(differ) else None
    delta = np.empty((patch.shape[0], w_new.shape[0]) + tuple(node.type.shape[2:]))
    step = max(1, ROWS // max(1, w_new[0].size))
    for start in range(0, w_new.shape[0], step):  # a block of output rows at a time: float64 weights stay small
        block = slice(start, start + step)
        part = 0.0
        if x_old is not None:
            reference = (w_old[block] if rows is None else w_old[rows[block]])[:, differ].astype(np.float64)
            part = _contribution(node, x_old, _fold(w_new[block], groups, differ) - reference)
        if len(patch.index):
            part = part + _contribution(node, patch.values, w_new[block][:, patch.index].astype(np.float64))
        delta[:, block] = part
    return delta


FOLD_POSITIONS = 1024
"""Below this many output positions (probes x output pixels) a layer whose input repeats old channels (a widen's
copies) is evaluated whole rather than checked by folding its weights (`linear_delta`): folding costs a few
numpy passes over the weights whatever the positions, the float64 product 2 x positions operations per weight
(each distinct row once, `local_check._evaluate_distinct_rows`). `python benchmarks/bench_fold.py` times both on
widened conv pairs (64 and 256 channels, 1x1 and 3x3, 4 probes): folding took 1.4-5.1x the product's time at 16
positions, 1.2-2.0x at 256, 0.72-1.00x at 1,024."""


def _by_old_channel(patch: Patch) -> tuple:
    """The channels the patch's runs hold, grouped by the old channel they hold: (new channels in old-channel
    order, where each group starts among them, each group's old channel)."""
    new, olds = patch.held()
    order = np.argsort(olds, kind="stable")
    cols, olds = new[order], olds[order]
    heads = np.flatnonzero(np.r_[True, olds[1:] != olds[:-1]]) if len(olds) else np.zeros(0, dtype=np.int64)
    return cols, heads, olds[heads]


def _fold(w_new: np.ndarray, groups: tuple, columns: np.ndarray) -> np.ndarray:
    """F[:, columns] (float64; `columns` ascending): for each of those old columns, the sum of the new columns
    holding it (`_by_old_channel`), 0 where none does."""
    cols, heads, targets = groups
    wanted = np.isin(targets, columns)
    sizes = np.diff(np.r_[heads, len(cols)])
    out = np.zeros((w_new.shape[0], len(columns)) + w_new.shape[2:])
    if wanted.any():
        members = cols[np.repeat(wanted, sizes)]  # the wanted groups, each still in one piece
        starts = np.r_[0, np.cumsum(sizes[wanted])[:-1]]
        out[:, np.searchsorted(columns, targets[wanted])] = np.add.reduceat(
            w_new[:, members].astype(np.float64), starts, axis=1)
    return out


def _differing_columns(w_new: np.ndarray, w_old: np.ndarray, rows, patch: Patch, groups: tuple) -> np.ndarray:
    """The old columns c where the fold F[:, c] is not bitwise the old weight's (rows: gathered), and those no
    new channel holds (`linear_delta`; groups: `_by_old_channel`), compared a block of rows at a time."""
    c_old = w_old.shape[1]
    cols, heads, targets = groups
    differ = np.ones(c_old, dtype=bool)  # columns nobody holds stay "differ": F = 0 there
    if not len(targets):
        return np.flatnonzero(differ)
    folds = patch.folds()
    if not folds and rows is None and _runs_equal(w_new, w_old, patch, 1):
        differ[targets] = False  # each held once, weights the old ones (views, no copy, for a few runs)
        return np.flatnonzero(differ)
    identity = not folds and len(cols) == c_old == w_new.shape[1] and np.array_equal(cols, np.arange(c_old)) \
        and np.array_equal(targets, cols)
    same = np.ones(len(targets), dtype=bool)
    step = max(1, ROWS // max(1, w_new[0].size))
    for start in range(0, w_new.shape[0], step):
        block = slice(start, start + step)
        reference = w_old[block] if rows is None else w_old[rows[block]]
        if identity:  # a widened layer reading unchanged values: its rows against the old rows
            equal = w_new[block] == reference
        elif not folds:
            equal = w_new[block][:, cols] == reference[:, targets]
        else:
            folded = np.add.reduceat(w_new[block][:, cols].astype(np.float64), heads, axis=1)
            equal = folded == reference[:, targets].astype(np.float64)
        if not equal.all():  # (the common case, all equal, without a reduction along the columns)
            same &= equal.reshape(equal.shape[0], equal.shape[1], -1).all(axis=(0, 2))
    differ[targets] = ~same
    return np.flatnonzero(differ)


def _contribution(node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The contribution of some input channels (values x, weights w on them) to a linear layer's output, bias
    left out."""
    if node.op == "linear":
        return x @ w.T
    return _conv(node, x, w)


def _conv(node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The contribution of some input channels to a conv2d's output, bias left out."""
    at = node.attrs
    return conv2d_array(x, w, None, at["stride"], at["padding"], at["dilation"], 1)


ROWS = 1 << 20
"""Weights compared at a time by `linear_delta` (a gathered copy of the rows is made to compare against)."""
