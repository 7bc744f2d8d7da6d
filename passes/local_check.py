"""The numeric check of a rewritten region: cost follows the rewrite, not the graph.

A chain keeps the probe activations of its current graph (the nodes' values on the probe inputs, computed in
float64 by the reference interpreter, kept in float32: those of its layers, pools and inputs, and of values
read more than once; every other value, elementwise or a copy, is *pending*, computed again from its inputs
when read, see KEPT_OPS). After a pass that rewrote the node set R, the new graph is evaluated only
where it can differ: starting from the cached activations at the region's inputs, a node is evaluated when
it is in R or reads a value that is not yet known to agree; every evaluated node that exists in the old
graph with the same type is compared with its cached value,

    max |v_new - v_old|  <=  rtol * (1 + max |v_old|)          (rtol: PRESERVATION_RTOL, or the pass's noise
                                                                 tolerance for a pass that adds noise)

and once it agrees, the evaluation stops there: everything downstream reads the cached value, which the new
graph provably computes too (same nodes, same inputs). A node whose type changed (a widened layer) or that is
new (an inserted block) has no old value to agree with; it stays "dirty" and its readers are evaluated too
(an inserted layer that provably returns its input, Net2Deeper's identity conv, takes its input's value
without being computed: `is_identity_layer`; a layer whose input a dense path extended, W' = [W | 0] over
concat(x, p) with x unchanged, keeps its old value without being computed: `extends_with_zeros`; and a node
that is its old self, the very same weights, reading a new value in place of an old one, as a deepen leaves
the readers of the value it extends, agrees as soon as that new value agrees with the old one it replaces:
`renamed_inputs`, for a pass that adds no noise).
A dirty value that reaches a graph output is compared with the old output. So the check evaluates the
region from its inputs to the first values where both graphs agree again, and nothing else.

What this trusts: R. A pass that changes a node it does not list is invisible here; the end-to-end check at
the end of a chain (the user's original model against the final one, in onnxruntime) is the backstop, and a
pass that declares no R gets the set of nodes that are not the very objects of the old graph (graphs are
immutable and share untouched nodes, so that set is exact).

An agreeing value is cached as its old value (they differ by rounding only), so the cached activations stay
those of one function. A pass that adds noise on purpose (not exact) changes values for real, within the
tolerance it states for the pre-activations of the layers reading the noisy weights (`widen`'s
NOISE_TOLERANCE_FACTOR is derived there): its region is checked against that tolerance the same way, its new
values are cached, and every value downstream of them becomes *pending*, computed from them only if a later
region reads it. So every cached value is what the current graph computes from the cached values of its
inputs, which is all a later local check relies on; the noise that accumulates at the outputs is the
end-to-end check's to bound.

A value whose channel count changed (every later concatenation of a dense block, after one of its layers is
widened or a layer is added) is followed on the channels that changed only, the others proven equal to the
old value, up to the linear layers that read it, whose change of output is computed from those channels
(`local_channels`): the check of a dense widen costs the channels it touched, not every later layer of the
block. A widened layer's output is followed the same way, as a gather of its old value (each copy an old
channel), through the per-channel ops and joins after it, to the layers reading it, whose split columns are
checked by folding them back onto the old columns (`local_channels.linear_delta`); a widened layer evaluated
whole computes each of its distinct rows once. A region as large as the graph (`widen_many`) lets each value
it computed go once its last reader is done.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import numpy as np

from easc.ir import Graph
from easc.ir.interpret import eval_node
from easc.ir.kernels import conv2d_array

from . import local_channels as channels
from .base import FunctionNotPreservedError


CHUNK = 1 << 20
"""Weights converted to float64 at a time (8 MB): the float64 copy of a 100M-parameter fully connected layer, or
of the 1024 x 1024 x 3 x 3 identity conv a deepen inserts at the end of a DenseNet-121 (75 MB), would otherwise
be the largest allocation of a whole `easc transform`."""


def _evaluate(node, args: list) -> np.ndarray:
    """`eval_node`, with a large layer's product computed a block of output units at a time (in its input's
    type: float64 for the checks, float32 for `base.float32_outputs`)."""
    weight = node.weights.get("weight")
    if node.op not in ("linear", "conv2d") or weight is None or weight.size <= CHUNK \
            or (node.op == "conv2d" and node.attrs["groups"] != 1):
        return eval_node(node, args)
    x, bias = args[0], node.weights.get("bias")
    rows = max(1, CHUNK // (weight.size // weight.shape[0]))
    y = np.empty((x.shape[0], weight.shape[0]) + tuple(node.type.shape[2:]), dtype=x.dtype)
    a = node.attrs
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows].astype(x.dtype)
        if node.op == "linear":
            y[:, start:start + rows] = x @ block.T
        else:
            y[:, start:start + rows] = conv2d_array(x, block, None, a["stride"], a["padding"], a["dilation"], 1)
    if bias is not None:
        y += bias.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def _evaluate_distinct_rows(node, args: list, claim) -> np.ndarray:
    """`_evaluate`, computing each distinct output row of a widened layer once: rows r and r' that copy the same
    old row (the pass's claim) and are bitwise the same weights and bias compute the same function of the same
    input, so the layer is evaluated on one row of each and the result gathered (half the products of a layer
    widened x2 that reads a changed value). Without a claim, or when the rows differ, the layer is evaluated
    whole."""
    weight = node.weights.get("weight")
    if claim is None or node.op not in ("conv2d", "linear") or weight is None \
            or (node.op == "conv2d" and node.attrs["groups"] != 1):
        return _evaluate(node, args)
    claim = np.asarray(claim)
    if claim.ndim != 1 or len(claim) != weight.shape[0] or claim.dtype.kind not in "iu":
        return _evaluate(node, args)
    _, first, inverse = np.unique(claim, return_index=True, return_inverse=True)
    if len(first) == len(claim):
        return _evaluate(node, args)
    chosen = first[inverse]  # for each row, the first row copying the same old row
    bias = node.weights.get("bias")
    if not np.array_equal(weight, weight[chosen]) or (bias is not None and not np.array_equal(bias, bias[chosen])):
        return _evaluate(node, args)
    rows = SimpleNamespace(name=node.name, op=node.op, attrs=node.attrs, type=node.type,
                           weights={k: w[first] for k, w in node.weights.items()})
    return _evaluate(rows, args)[:, inverse]


def identity_diff(before: Graph, after: Graph) -> frozenset:
    """Names of `after`'s nodes that are not the very node objects of `before` (new or rewritten)."""
    old = before._index
    return frozenset(n.name for n in after.nodes if old.get(n.name) is not n)


def _max_abs(a) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


class Activations:
    """The probe values of one graph's nodes (float32), some of them `pending`: not computed yet, computed from
    their inputs on first use. Values that are cheap to compute again (`KEPT_OPS`) are pending from the start;
    after a pass that adds noise the values downstream of it are too, so they cost nothing unless a later
    region reads them."""

    def __init__(self, graph: Graph, values: dict, pending=()):
        # weakly: a ProbeSet keeps Activations by graph in a WeakKeyDictionary, which a strong reference back
        # to the graph would keep alive forever
        self._graph = weakref.ref(graph)
        self.values = values
        self.pending = set(pending)
        self._concat_channels: dict = {}  # (name, channels) -> value: see `channels`, emptied by `end_check`

    def __contains__(self, name) -> bool:
        return name in self.values or name in self.pending

    def __getitem__(self, name) -> np.ndarray:
        stack = [name]
        while stack:  # post-order over pending inputs, without recursion (nets are deep)
            current = stack[-1]
            if current not in self.pending:
                stack.pop()
                continue
            node = self._graph().node(current)
            waiting = [i for i in node.inputs if i in self.pending]
            if waiting:
                stack.extend(waiting)
                continue
            value = _evaluate(node, [self.values[i].astype(np.float64) for i in node.inputs])
            self.values[current] = value.astype(np.float32)
            self.pending.discard(current)
            stack.pop()
        return self.values[name]

    def channels(self, name: str, index: np.ndarray) -> np.ndarray:
        """`self[name][:, index]` in float64. A pending per-channel op, or concatenation, is computed on those
        channels only, from its inputs' same channels (and nothing computed is kept): a linear reader's check
        needs the old value of a concatenation's few replaced channels, not the whole of it."""
        graph = self._graph()
        if name in self.values or name not in self.pending:
            return self[name][:, index].astype(np.float64)
        node = graph.node(name)
        if node.op == "concat":
            # A dense block exported as a chain (concat_k = concat(concat_k-1, y_k)) asks, for each later
            # layer's check, for the same old channels of concat_k, concat_k+1, ...: each level is worked out once
            # per check (quadratic in the block's depth otherwise), then let go (`end_check`).
            key = (name, index.tobytes())
            if key not in self._concat_channels:
                pieces, offset = [], 0
                for i in node.inputs:
                    c = graph.node(i).type.shape[1]
                    mine = (index >= offset) & (index < offset + c)
                    if mine.any():
                        pieces.append((mine, self.channels(i, index[mine] - offset)))
                    offset += c
                out = np.empty((pieces[0][1].shape[0], len(index)) + pieces[0][1].shape[2:])
                for mine, value in pieces:
                    out[:, mine] = value
                out.flags.writeable = False  # shared by every reader of this check
                self._concat_channels[key] = out
            return self._concat_channels[key]
        if node.op in channels.PER_CHANNEL and len(node.inputs) == 1 \
                and all(w.ndim == 1 for w in node.weights.values()):
            return channels.on_channels(node, index, self.channels(node.inputs[0], index))
        return self[name][:, index].astype(np.float64)

    def end_check(self) -> None:
        """Let go of the channels `channels` worked out for one check (a few MB on a deep dense block)."""
        self._concat_channels.clear()


def _channel_step(node, old, patches: dict, state, cached, after: Graph, before: Graph):
    """The node's value as a `Patch`, or a linear reader's new - old output, computed on touched channels only
    (`local_channels`); None: evaluate it whole."""
    if node.op == "concat":
        return channels.concat(node, old, state, after, before)
    if node.op in ("add", "mul"):
        return channels.elementwise(node, old, [patches.get(i) for i in node.inputs])
    if len(node.inputs) != 1 or node.inputs[0] not in patches:
        return None
    patch = patches[node.inputs[0]]
    step = channels.per_channel(node, old, patch) or channels.flatten(node, old, patch)
    return step if step is not None else channels.linear_delta(
        node, old, patch, lambda index: cached.channels(node.inputs[0], index))


def is_identity_layer(node, input_type) -> bool:
    """Whether `node` returns its input unchanged, read off its attributes and weights (what Net2Deeper
    inserts): a conv2d k x k, k odd, stride 1, dilation 1, padding k//2, groups 1, C -> C channels, whose only
    nonzero weights are 1 at [c, c, k//2, k//2], bias zero or none; or a linear C -> C with weight I and zero
    or no bias. Each output is then 1 * x plus products 0 * x and a zero bias: exactly x for every finite x
    (the probe values are), so the check takes the input's value for it instead of computing the layer (for
    a deepen after DenseNet-121's last block, a 1024 x 1024 x 3 x 3 conv)."""
    if node.op not in ("conv2d", "linear") or len(node.inputs) != 1 or node.type.shape != input_type.shape:
        return False
    weight, bias = node.weights.get("weight"), node.weights.get("bias")
    c = node.type.shape[1]
    if weight is None or (bias is not None and np.any(bias)):
        return False
    if node.op == "conv2d":
        a = node.attrs
        (kh, kw) = a["kernel"]
        if not (kh == kw and kh % 2 == 1 and a["stride"] == (1, 1) and a["dilation"] == (1, 1)
                and a["padding"] == (kh // 2, kw // 2) and a["groups"] == 1 and weight.shape == (c, c, kh, kw)):
            return False
        taps = weight[np.arange(c), np.arange(c), kh // 2, kw // 2]
    else:
        if weight.shape != (c, c):
            return False
        taps = weight[np.arange(c), np.arange(c)]
    return bool(np.all(taps == 1.0)) and int(np.count_nonzero(weight)) == c


def extends_with_zeros(node, old, after: Graph, unchanged, new_values: dict) -> bool:
    """Whether `node` computes exactly what the old node of its name did, read off its input and weights (what
    a dense path, `skip`, makes of its DST): the old node read x; the new one, of the same op, attributes and
    output type, reads concat(x, p1, ..., pk) where x holds its old value (`unchanged(x)`), and its weight is
    [W_old | 0]: bitwise the old weight on x's C columns, exactly 0 on every other column, the bias the old one.
    Then

        W' [x; p] + b  =  W x + 0 p + b  =  W x + b

    for every finite p (the concatenation's new columns, `new_values`, are checked finite here): each product
    0 * p is a zero, and adding zeros changes no sum. So the check keeps the old value and does not compute the
    layer (for a skip into one of VGG-11-BN's 512-channel 3x3 convs, a float64 conv over 512 + P channels)."""
    if node.op not in ("conv2d", "linear") or old.op != node.op or len(node.inputs) != 1 or len(old.inputs) != 1:
        return False
    if (node.op == "conv2d" and node.attrs["groups"] != 1) or dict(node.attrs) != dict(old.attrs):
        return False
    joined = after.node(node.inputs[0])
    x = old.inputs[0]
    if joined.op != "concat" or len(joined.inputs) < 2 or joined.inputs[0] != x or not unchanged(x):
        return False
    c = old.weights["weight"].shape[1]
    if after.node(x).type.shape[1] != c:  # x's channels are the first c columns of the concatenation
        return False
    if joined.name not in new_values or set(node.weights) != set(old.weights):
        return False
    bias, old_bias = node.weights.get("bias"), old.weights.get("bias")
    if (bias is None) != (old_bias is None) or (bias is not None and not np.array_equal(bias, old_bias)):
        return False
    weight, old_weight = node.weights["weight"], old.weights["weight"]
    if weight.shape[0] != old_weight.shape[0] or weight.shape[2:] != old_weight.shape[2:] or weight.shape[1] <= c:
        return False
    if not np.array_equal(weight[:, :c], old_weight) or np.any(weight[:, c:]):
        return False
    added = new_values[joined.name][:, c:]
    return added.shape[1] == weight.shape[1] - c and bool(np.all(np.isfinite(added)))


def renamed_inputs(node, old) -> list:
    """[(new input, old input)] at each place where `node`, otherwise `old` itself (same op, attributes and the
    very same weight arrays), reads another value, as a deepen leaves the readers of the value it extends; []
    when anything else differs."""
    if node.op != old.op or len(node.inputs) != len(old.inputs) or dict(node.attrs) != dict(old.attrs):
        return []
    if set(node.weights) != set(old.weights) or any(node.weights[k] is not old.weights[k] for k in node.weights):
        return []
    return [(i, j) for i, j in zip(node.inputs, old.inputs) if i != j]


def _agrees(value, old_value, rtol: float) -> bool:
    return value.shape == old_value.shape and _within(value - old_value, old_value, rtol)


def _within(difference, old_value, rtol: float) -> bool:
    return _max_abs(difference) <= rtol * (1 + _max_abs(old_value))


LARGE_REGION = 32
"""Values a region computes before it starts letting them go after their last readers (`_check_region`)."""

KEPT_OPS = frozenset({"input", "conv2d", "linear", "maxpool2d", "avgpool2d", "global_avgpool"})
"""Ops whose probe values a chain keeps (float32); every other value is *pending*, computed again from its
inputs when a check reads it. Those others (batchnorm, activations, concatenations, adds, reshapes) are
elementwise or copies: recomputing one costs a pass over its memory, not a layer's products, and keeping them
was most of the activations' memory (at 64x64, 4 probes: DenseNet-121 57 -> 10 MB kept, its concatenations and
their batchnorms and relus being the rest; ResNet-50 35 -> 22 MB)."""


def kept_values(graph: Graph) -> set:
    """The nodes whose probe values a chain keeps: layers, pools and inputs, and any value read by more than
    one node except a concatenation (a residual stream's value is read again by every block; a concatenation
    is a copy of values kept elsewhere)."""
    consumers = {}
    for node in graph.nodes:
        for i in node.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    return {n.name for n in graph.nodes
            if n.op in KEPT_OPS or (n.op != "concat" and consumers.get(n.name, 0) > 1)}


def _descendants(graph: Graph, sources) -> set:
    seen, work = set(), list(sources)
    while work:
        for reader in graph.consumers(work.pop()):
            if reader not in seen:
                seen.add(reader)
                work.append(reader)
    return seen


def check_region(before: Graph, after: Graph, cached, rewritten, rtol: float, what: str,
                 exact: bool = True, copies: dict | None = None) -> tuple:
    """Evaluate `after` where it can differ from `before` and compare (see the module doc).

    cached: `before`'s `Activations` (or a dict of every node's value): computed in float64, kept in float32
            (half the memory; float32 rounding, 6e-8 relative, is far below the tolerances). The region is
            computed in float64 from them.
    exact:  False for a pass that adds noise on purpose: a value it changes within `rtol` is kept as its new
            value, and everything downstream becomes pending (computed from it if a later region needs it).
    copies: the pass's claim, value -> for each new channel the old channel it copies (`PassResult.channels`):
            a widened layer whose rows are proven copies (`local_channels.linear_delta` with the claim's rows)
            is not evaluated, its value is the old one gathered; one evaluated whole computes each distinct
            row once (`_evaluate_distinct_rows`).
    Returns (`Activations` of `after`, sharing `cached`'s arrays for untouched nodes; max |difference| seen;
    max |value| there; nodes evaluated). Raises `FunctionNotPreservedError` naming the first value that
    differs beyond the tolerance.
    """
    if not isinstance(cached, Activations):
        cached = Activations(before, dict(cached))
    try:
        return _check_region(before, after, cached, rewritten, rtol, what, exact, copies)
    finally:
        cached.end_check()


def _check_region(before: Graph, after: Graph, cached: Activations, rewritten, rtol: float, what: str,
                  exact: bool, copies: dict | None) -> tuple:
    old_index = before._index
    rewritten = set(rewritten)
    new_values: dict = {}
    dirty: set = set()
    changed: list = []  # values a noisy pass changed within its tolerance: their readers become pending
    patches: dict = {}  # changed values kept as runs of their old value plus touched channels (local_channels)

    def state(name: str):
        """For `local_channels`: None (the cached value holds), a Patch, or the whole new value."""
        return patches.get(name, new_values.get(name) if name in dirty else None)

    worst, scale, evaluated = 0.0, 0.0, 0

    def compare(name: str, value, old_value, delta=None) -> float:
        """Judge `value - old_value` (or `delta`, that difference computed directly) within the tolerance."""
        nonlocal worst, scale
        size = _max_abs(old_value)
        if delta is None and value.shape != old_value.shape:
            raise FunctionNotPreservedError(f"{what} did not preserve the function: the value of {name} changed "
                                            f"shape {old_value.shape} -> {value.shape}")
        diff = _max_abs(value - old_value if delta is None else delta)
        allowed = rtol * (1 + size)
        if not diff <= allowed:
            raise FunctionNotPreservedError(f"{what} did not preserve the function: the value of {name} differs "
                                            f"by max |difference| {diff:.3g} > allowed {allowed:.3g}")
        worst, scale = max(worst, diff), max(scale, size)
        return diff

    def batch() -> int:
        return cached[before.inputs[0].name].shape[0]

    def holds_old_value(i: str) -> bool:
        """Whether value `i` is its cached old value: nothing this region evaluated changed it."""
        return i in cached and i not in dirty and i not in replaced

    # A new value is let go once its last reader is done (kept in float32 if the chain keeps it, `kept_values`):
    # a region as large as the graph (`widen_many`) would otherwise hold every float64 value at once.
    # (a region of a few nodes keeps its few values: the bookkeeping, the new graph's table of readers, is paid
    # by regions that compute more than LARGE_REGION values only)
    keep = kept_values(after)
    dying: dict = {}  # position of a value's last reader -> the values to let go after it
    held: list = []  # values computed before the bookkeeping started
    booked = False
    here = 0  # position of the node being checked

    def computed(name: str) -> None:
        """`name` got a new value or a patch: let it go after its last reader (kept if a graph output)."""
        nonlocal booked
        held.append(name)
        if not booked and len(held) < LARGE_REGION:
            return
        for value in ([name] if booked else held):
            readers = after.consumers(value)
            if readers and not after.output_names_of(value):
                dying.setdefault(max(after.position(readers[-1]), here), []).append(value)
        booked = True

    replaced: set = set()  # every name new_values ever held
    stash: dict = {}  # float32 values of kept nodes let go during the region

    def let_go(names) -> None:
        for i in names:
            if i in new_values:
                if i in keep:
                    stash[i] = new_values[i].astype(np.float32)
                del new_values[i]
            if i in patches:
                if i in keep and i in cached.values and i not in cached.pending:
                    stash[i] = patches[i].assemble(cached.values[i], np.float32)
                del patches[i]

    for here, node in enumerate(after.nodes):
        let_go(dying.pop(here - 1, ()))
        name = node.name
        if node.op == "input":
            if name not in cached:
                raise FunctionNotPreservedError(f"{what} did not preserve the function: new graph input {name}")
            continue
        if name not in rewritten and name in cached and not any(i in dirty for i in node.inputs):
            continue
        old = old_index.get(name)
        if exact and name in cached:  # on the touched channels only, where that is proven enough
            step = _channel_step(node, old, patches, state, cached, after, before)
            if step is not None:
                evaluated += 1
                if isinstance(step, channels.Patch):
                    patches[name] = step
                    computed(name)
                    dirty.add(name)
                else:  # a linear reader's new - old output, from the touched channels: agrees or raises
                    compare(name, None, cached[name], delta=step)
                continue
        claim = copies.get(name) if copies and name in cached and len(node.inputs) == 1 else None
        if claim is not None:  # a widened layer: its value the old one gathered by the claim, where proven
            inp = node.inputs[0]
            patch = patches.get(inp)
            if patch is None and holds_old_value(inp):
                patch = channels.Patch.gather((batch(),) + tuple(after.node(inp).type.shape[1:]),
                                              np.arange(after.node(inp).type.shape[1]))
            delta = None if patch is None else channels.linear_delta(
                node, old, patch, lambda index: cached.channels(inp, index), rows=np.asarray(claim))
            # (a pass that adds noise keeps a gather only where nothing at all differs)
            proven = delta is not None and (_within(delta, cached[name], rtol) if exact else not delta.size)
            if proven:
                compare(name, None, cached[name], delta=delta)
                patches[name] = channels.Patch.gather((batch(),) + tuple(node.type.shape[1:]), claim)
                computed(name)
                dirty.add(name)
                evaluated += 1
                continue
        comparable = old is not None and name in cached and old.type == node.type  # an old value to agree with
        if comparable and extends_with_zeros(node, old, after, holds_old_value, new_values):
            evaluated += 1  # the old layer's function exactly (`extends_with_zeros`): its cached value holds
            continue
        if comparable and exact:
            renamed = renamed_inputs(node, old)
            if renamed and all(holds_old_value(i) for i, j in zip(node.inputs, old.inputs) if i == j) \
                    and all(i in new_values and holds_old_value(j) and _agrees(new_values[i], cached[j], rtol)
                            for i, j in renamed):
                for i, j in renamed:  # the same function of values that agree: it agrees
                    compare(f"{i} (read by {name} in place of {j})", new_values[i], cached[j])
                evaluated += 1
                continue
        for i in node.inputs:  # a patched input read whole: assembled once
            if i in patches and i not in new_values:
                new_values[i] = patches[i].assemble(cached[i])
                replaced.add(i)
        arguments = [new_values[i] if i in new_values else cached[i].astype(np.float64) for i in node.inputs]
        if old is None and is_identity_layer(node, after.node(node.inputs[0]).type if node.inputs else None):
            value = arguments[0]  # an inserted identity layer computes its input exactly (`is_identity_layer`)
        else:
            value = _evaluate_distinct_rows(node, arguments, claim)
        evaluated += 1
        if comparable:
            # agrees: downstream reads the cached value again (a noisy pass: its new value, see `changed`)
            if compare(name, value, cached[name]) > 0 and not exact:
                new_values[name] = value
                replaced.add(name)
                computed(name)
                changed.append(name)
        else:
            new_values[name] = value
            replaced.add(name)
            computed(name)
            dirty.add(name)
    for public, name in after.outputs.items():
        if name in dirty:
            value = new_values[name] if name in new_values else patches[name].assemble(cached[name])
            compare(f"output {public!r}", value, cached[before.outputs[public]])
    # Downstream of values a noisy pass changed: computed again if read. That includes values this region did
    # evaluate (and even found changed themselves), when one of their inputs is such a descendant that the
    # region did not evaluate: they were computed from that input's old (cached) value, which the noise has
    # since changed (a dense block: a later layer reads the concatenation of every earlier layer's output).
    noisy = _descendants(after, changed)
    values, pending = {}, set()
    for n in after.nodes:
        name = n.name
        if name in noisy:
            pending.add(name)
        elif name in stash:
            values[name] = stash[name]
        elif name in keep and name in new_values:
            values[name] = new_values[name].astype(np.float32)
        elif name in keep and name in patches and name in cached.values and name not in cached.pending:
            values[name] = patches[name].assemble(cached.values[name], np.float32)
        elif (name in keep and name in cached.values and name not in cached.pending and name not in noisy
              and name not in patches and name not in dirty):
            values[name] = cached.values[name]
        else:  # recomputed from its inputs' cached values when a later check reads it
            pending.add(name)
    return Activations(after, values, pending), worst, scale, evaluated
