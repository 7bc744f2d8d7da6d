"""Net2Wider: make a conv2d or linear layer wider (n -> m units) without changing what the network computes.

The mapping g: {0..m-1} -> {0..n-1} keeps units 0..n-1 in place (g(j) = j) and lets each new unit
j = n..m-1 copy a unit g(j) drawn uniformly at random, with replacement, from 0..n-1 by the given
`numpy.random.Generator`. With copy counts c(k) = |{j : g(j) = k}|:

    widened layer (and every coupled layer, see below):  W'[j] = W[g(j)],  b'[j] = b[g(j)]   (output rows)
    channel-wise ops on the way (batchnorm):             p'[j] = p[g(j)]  for scale, bias, mean, var
    each consumer (conv2d / linear reading the value):   V'[:, j] = V[:, g(j)] / c(g(j))  (input columns)

Unit j of the wider layer then computes exactly what unit g(j) did, channel-wise ops keep that true, and a
consumer's sum over the wider input, sum_j V[:, g(j)] / c(g(j)) * h[g(j)] = sum_k V[:, k] h[k], is the old sum.
Where the channels reach a consumer is found by `channels.trace_channels`: through channel-wise ops; through
a flatten, where channel c becomes the block of H*W columns [c HW, (c+1) HW) and whole blocks are gathered;
through a concat, where they are a segment at an offset and only that segment is gathered (later segments
shift); and through a residual add, whose inputs must all lay the channels out the same way. The producers
of an add's other inputs are therefore widened *with the same g* ("coupled"; `changes` names them); the pass
refuses only when such a producer cannot be widened (a graph input, a grouped conv, a concat the channels
straddle). Through a channel shuffle, a channel gather or a slice cutting the channels (ShuffleNet's
`chunk(2)` after a shuffle) the map is carried through the permutation: each copy sits right after its
channel, the rearranging node reads the new columns `I'(k, u) = P(I(k), u)` and stays a slice or a shuffle
when it still is one, else becomes a `channel_gather` (the math is in `channels.py`, "Rearrangements").
It refuses when the channels reach a graph output (its shape would change), a softmax or another op it
cannot remap. Node names do not change: the nodes are edited in place in the new graph.

Several layers at once (`widen_many`): each layer gets its own mapping, and since the channels of different
layers never share a column of any value (layers coupled through an add share one flow and one mapping), each
mapping acts on its own columns: a value carrying several layers' channels (a dense block's concatenation) is
gathered once by the combination of their layouts (`channels.combined_remaps`), and each consumer's sums are
unchanged flow by flow. `shared_readers` groups the layers worth widening together: those whose channels meet
in common consumers, which one `widen` per layer would gather once per layer.

Noise (optional, `noise` > 0): the copies are identical to their originals, incoming weights and outgoing
weights alike, so their gradients would be identical too and they would never drift apart. The pass adds
N(0, (noise * std(V))^2) to the *outgoing* weights of the new copies only, V'[:, j] for j >= n, in every
consumer V. Outgoing rather than incoming because the perturbation then enters each consumer's sum directly
(noise * h, a bounded change) instead of passing through the layer's batchnorm, which can amplify it by
scale / sqrt(var); the copies still compute the same activations, but their different outgoing weights
send them different gradients, which breaks the symmetry from the first step. The originals' columns
V[:, g(j)] / c(g(j)) for j < n are left exactly as above. With noise the result is not exact
(`exact=False`) and `tolerance` states the allowed difference; without it the pass is exact.
"""

from __future__ import annotations

import math

import numpy as np

from easc.ir import OPS, Graph, UnknownNodeError
from easc.ir.ops import LAYER_OPS, infer_type, shuffle_index

from .base import PRESERVATION_RTOL, PassError, PassResult, default_rng, owned
from .channels import (ChannelFlow, ChannelFlowError, Remap, Segment, combined_remaps, is_depthwise, rearrangement,
                       trace_channels)

NOISE_TOLERANCE_FACTOR = 10.0
"""Allowed output change per unit of noise, relative to (1 + max |output|).

A consumer's pre-activation moves by a sum over the m - n copies of N(0, (noise std(V))^2) h terms, about
noise sqrt((m - n) / n) relative to the pre-activation itself; the factor 10 covers the Gaussian tail
over a probe batch and mild amplification by the layers downstream. It is a stated bound for a variant
that changes the function on purpose, not a rounding argument.
"""


def wider_mapping(n: int, m: int, rng: np.random.Generator, groups: int = 1) -> np.ndarray:
    """g: units 0..n-1 keep their place; units n..m-1 copy a unit drawn uniformly (with replacement).

    With groups G > 1 (a grouped conv reads or makes the channels): G blocks of n/G units, each followed by
    its (m - n)/G copies drawn from that block, so every group grows alike and keeps its own units.
    """
    if groups == 1:
        return np.concatenate([np.arange(n), rng.integers(0, n, size=m - n)]).astype(np.int64)
    b, k = n // groups, (m - n) // groups
    parts = []
    for i in range(groups):
        parts += [np.arange(i * b, (i + 1) * b), rng.integers(i * b, (i + 1) * b, size=k)]
    return np.concatenate(parts).astype(np.int64)


def _layer(graph: Graph, layer: str):
    if layer not in graph or graph.node(layer).op not in LAYER_OPS:
        raise UnknownNodeError(graph, layer, kinds=LAYER_OPS)
    return graph.node(layer)


def _flow(graph: Graph, layer: str) -> ChannelFlow:
    try:
        return trace_channels(graph, layer)
    except ChannelFlowError as e:
        raise PassError(f"widen {layer}: {e}") from None


def widen_reason(graph: Graph, layer: str) -> str | None:
    """Why `widen` would refuse `layer` at any width, or None if it accepts it.

    Raises `UnknownNodeError` (listing the layers) when `layer` is not a conv2d or linear node.
    """
    _layer(graph, layer)
    try:
        _flow(graph, layer)
    except PassError as e:
        return str(e)
    return None


def nearest_valid_width(graph: Graph, layer: str, width: int) -> int:
    """The smallest width >= `width` that `widen` accepts for `layer`: through a grouped conv with G groups
    the layer grows by a multiple of G (see `channels.py`)."""
    n, groups = _layer(graph, layer).width, _flow(graph, layer).groups
    return n + -(-(width - n) // groups) * groups


def widenable_layers(graph: Graph) -> list:
    """The conv2d / linear layers `widen` accepts, in graph order (the CLI's default `--widen` targets)."""
    return [node.name for node in graph.layers() if widen_reason(graph, node.name) is None]


def _whole(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)):
        return False
    return math.isfinite(x) and int(x) == x


def _unit(node) -> str:
    if node.op == "linear":
        return "units"
    return "channels" if node.type.rank == 4 else "features"


def widen(graph: Graph, layer: str, width: int, *, rng: np.random.Generator | None = None,
          noise: float = 0.0) -> PassResult:
    """Widen `layer` (a conv2d or linear node) to `width` units, keeping the function (see the module doc).

    Raises `UnknownNodeError` for a name that is not a layer, `PassError` with the reason when the layer
    cannot be widened to `width`.
    """
    node = _layer(graph, layer)
    n = node.width
    if not _whole(width):
        raise PassError(f"widen {layer}: width must be a whole number, got {width!r}")
    width = int(width)
    if width == n:
        raise PassError(f"widen {layer}: it is already {n} wide")
    if width < n:
        raise PassError(f"widen {layer}: width {width} is smaller than its current width {n}; "
                        f"widen only adds units")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) \
            or not (noise >= 0 and math.isfinite(noise)):
        raise PassError(f"widen {layer}: noise must be a finite number >= 0, got {noise!r}")
    flow = _flow(graph, layer)
    if (width - n) % flow.groups:
        raise PassError(f"widen {layer}: its channels pass through a grouped conv (groups={flow.groups}), so it "
                        f"grows by a multiple of {flow.groups} (every group alike); {width} is {n} + {width - n}")
    rng = default_rng(rng)
    g = wider_mapping(n, width, rng, flow.groups)
    result = _rewrite(graph, [(flow, g)], flow.remaps(g), noise, rng)
    result.record.update({"pass": "widen", "layer": layer, "width": width})
    if noise > 0:
        result.record["noise"] = float(noise)
        result.exact = False
        result.tolerance = max(PRESERVATION_RTOL, NOISE_TOLERANCE_FACTOR * noise * math.sqrt((width - n) / n))
    return result


def many_reason(graph: Graph, layer: str) -> str | None:
    """Why `widen_many` would not take `layer` along with others (None: it would). It takes the layers whose
    channels stay whole segments of ungrouped values: a channel shuffle, gather or slice on the way needs the
    per-flow unit layout (`channels.combined_remaps`), and a grouped conv its own mapping; `widen` takes those
    one at a time."""
    why = widen_reason(graph, layer)
    if why is not None:
        return why
    flow = _flow(graph, layer)
    if flow.groups != 1:
        return f"widen_many {layer}: its channels pass through a grouped conv; widen it on its own"
    for value in flow.segments:
        for reader in graph.consumers(value):
            if rearrangement(graph.node(reader), flow.channels[value]) is not None:
                return (f"widen_many {layer}: its channels pass through {reader} ({graph.node(reader).op}); "
                        f"widen it on its own")
    return None


def shared_readers(graph: Graph, layers) -> list:
    """`layers` (those `many_reason` accepts) in groups whose channels meet in common consumers, in graph order:
    two layers are in one group when a layer reads the channels of both (a dense block's later layers read every
    earlier layer's growth, an inception module's branches are read together by the next module's), and a layer
    whose channels a layer of such a group reads, or that reads a group's channels, joins it. Widening a group
    with one `widen_many` gathers each such consumer once; one `widen` per layer would gather it once per layer
    it reads. A layer coupled to another through an add is in that layer's flow, listed once."""
    flows, owner = [], {}
    for layer in layers:
        if layer in owner:
            continue
        flow = _flow(graph, layer)
        for source in flow.sources:
            owner[source] = len(flows)
        flows.append(flow)
    parent = list(range(len(flows)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_reader: dict = {}
    for k, flow in enumerate(flows):
        for consumer in flow.consumers:
            if consumer in first_reader:
                parent[root(k)] = root(first_reader[consumer])
            else:
                first_reader[consumer] = k
    # a flow read by a layer of such a group, or reading one (a dense layer's bottleneck, read by the layer whose
    # growth the block's later layers read together; a transition, read with the next block's growth), joins it:
    # that layer is rewritten by the group's pass anyway. Two lone flows stay apart (a plain chain of layers).
    size: dict = {}
    for k in range(len(flows)):
        size[root(k)] = size.get(root(k), 0) + 1
    for k, flow in enumerate(flows):
        for c in flow.consumers:
            if c not in owner:
                continue
            a, b = root(k), root(owner[c])
            if a != b and (size[a] > 1 or size[b] > 1):
                parent[a] = b
                size[b] += size[a]
    groups: dict = {}
    for k, flow in enumerate(flows):
        groups.setdefault(root(k), []).append(flow.layer)
    return list(groups.values())


def widen_many(graph: Graph, layers, factor: float = 2.0, *, rng: np.random.Generator | None = None) -> PassResult:
    """Widen each of `layers` to ceil(width * factor) units in one rewrite, keeping the function.

    The same Net2Wider as `widen` (module doc), one mapping g per layer drawn in the order given, applied to
    all of them at once: every weight on the way is gathered once, by the composition of the mappings whose
    channels it holds (`channels.combined_remaps`; their channels never share a column, so each mapping acts on
    its own columns and the sums of each consumer are unchanged flow by flow). A layer coupled to an earlier
    one through a residual add is widened by it, with its mapping. Widening every layer of a DenseNet one pass
    at a time remaps each later layer of a block once per earlier layer; here once. Exact (no noise: `widen`
    adds noise, one layer at a time). Raises `PassError` for a layer `many_reason` refuses, or a width the
    factor does not grow.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.number)) \
            or not (math.isfinite(factor) and factor > 1):
        raise PassError(f"widen_many: factor must be a finite number > 1, got {factor!r}")
    if isinstance(layers, str) or not all(isinstance(layer, str) for layer in layers):
        raise PassError(f"widen_many: layers must be a list of layer names, got {layers!r}")
    rng = default_rng(rng)
    flows, covered = [], set()
    for layer in layers:
        _layer(graph, layer)
        if layer in covered:  # coupled to an earlier layer through an add: widened with its mapping
            continue
        why = many_reason(graph, layer)
        if why is not None:
            raise PassError(why if why.startswith("widen_many") else f"widen_many: {why}")
        flow = _flow(graph, layer)
        n = flow.width
        width = math.ceil(n * factor)
        flows.append((flow, wider_mapping(n, width, rng)))
        covered.update(flow.sources)
    if not flows:
        raise PassError("widen_many: no layer given")
    try:
        remaps = combined_remaps(flows)
    except ChannelFlowError as e:
        raise PassError(f"widen_many: {e}") from None
    result = _rewrite(graph, flows, remaps, 0.0, rng)
    result.record.update({"pass": "widen_many", "layers": [flow.layer for flow, _ in flows],
                          "factor": float(factor)})
    return result


def _rewrite(graph: Graph, flows: list, remaps: dict, noise: float, rng) -> PassResult:
    """The widened graph: each flow's sources gather their output rows, channel-wise ops and depthwise convs
    their channels, consumers their input columns (`remaps`: every value carrying channels, by `ChannelFlow.remaps`
    for one flow, `channels.combined_remaps` for several)."""
    source_of = {s: flow for flow, _ in flows for s in flow.sources}
    consumers = {c for flow, _ in flows for c in flow.consumers}
    new_nodes, types, edits, rewritten = [], {}, {}, []
    roles = set(remaps) | set(source_of) | consumers
    retyped: set = set()  # nodes whose type changed: their readers' types are inferred again
    for node in graph.nodes:
        if node.op == "input" or (node.name not in roles
                                  and not any(i in retyped or i in remaps for i in node.inputs)):
            # untouched: shared as it is (the cost of a widen follows its channels, not the graph)
            new_nodes.append(node)
            types[node.name] = node.type
            continue
        attrs, weights, lines = dict(node.attrs), dict(node.weights), []
        here = remaps.get(node.name)
        if node.name in source_of:
            rows = here.index
            weights["weight"] = owned(weights["weight"][rows])
            if "bias" in weights:
                weights["bias"] = owned(weights["bias"][rows])
            attrs["out"] = len(rows)
            lines.append(f"{node.name}: {node.width} -> {len(rows)} {_unit(node)}"
                         + _coupling_note(source_of[node.name], node.name))
        elif here is not None and is_depthwise(node):
            weights = {k: w[here.index] for k, w in weights.items()}
            attrs["out"] = attrs["groups"] = len(here.index)
            lines.append(f"{node.name}: depthwise, {len(here.index)} filters (copies of their channels' filters)")
        elif here is not None and node.weights and OPS[node.op].channelwise:
            weights = {k: owned(w[here.index]) for k, w in weights.items()}
            lines.append(f"{node.name}: gathered {len(here.index)} channels")
        op = node.op
        if len(flows) == 1 and node.inputs and node.inputs[0] in remaps \
                and rearrangement(node, flows[0][0].channels[node.inputs[0]]) is not None:
            op, attrs, line = _rearranged(node, remaps[node.inputs[0]], here, flows[0][0])
            if line:
                lines.append(line)
        if node.name in consumers:
            blocks = sorted({f.block for flow, _ in flows for f in flow.segments.get(node.inputs[0], ())})
            lines.append(_remap_consumer(node, weights, remaps[node.inputs[0]], blocks, noise, rng))
        if node.op in ("concat", "add") and here is not None and len(here.index) != node.type.channels:
            lines.append(_join_note(node, [flow for flow, _ in flows if node.name in flow.segments], here))
        new_type = infer_type(op, [types[i] for i in node.inputs], attrs)
        if lines or new_type != node.type:
            if new_type != node.type:
                retyped.add(node.name)
            node = node.replace(op=op, attrs=attrs, weights=weights, type=new_type)
            rewritten.append(node.name)
        new_nodes.append(node)
        types[node.name] = node.type
        if lines:
            edits[node.name] = lines

    first = flows[0][0].layer
    changes = edits.pop(first, []) + [line for lines in edits.values() for line in lines]
    return PassResult(graph.replace(nodes=new_nodes), changes, {}, rewritten=frozenset(rewritten),
                      channels={value: remap.index for value, remap in remaps.items()})


def _rearranged(node, before: Remap, after: Remap | None, flow: ChannelFlow) -> tuple:
    """A slice / channel shuffle / channel gather after its input was remapped: (op, attrs, change line).

    New output column (k, u) reads the new input column holding old column I(k) for unit u (the module doc of
    `channels.py`, "Rearrangements"); the result stays a slice or a shuffle when it still is one.
    """
    old_in = flow.channels[node.inputs[0]]
    moved = rearrangement(node, old_in)
    after = after if after is not None else Remap.identity(len(moved))
    where = {(int(i), int(u)): p for p, (i, u) in enumerate(zip(before.index, before.unit))}
    index = np.array([where[int(moved[k]), int(u)] for k, u in zip(after.index, after.unit)], dtype=np.int64)
    width = len(before.index)
    if node.op == "slice" and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        attrs = {"start": int(index[0]), "end": int(index[-1]) + 1}
        if attrs == dict(node.attrs):
            return "slice", attrs, ""
        return "slice", attrs, (f"{node.name}: channels {node.attrs['start']}..{node.attrs['end'] - 1} are now "
                                f"{attrs['start']}..{attrs['end'] - 1}")
    if node.op == "channel_shuffle" and len(index) == width and width % node.attrs["groups"] == 0 \
            and tuple(index) == shuffle_index(width, node.attrs["groups"]):
        return "channel_shuffle", dict(node.attrs), (f"{node.name}: shuffles {width} channels" if width != old_in
                                                     else "")
    attrs = {"index": tuple(int(i) for i in index)}
    if node.op == "channel_gather":
        return "channel_gather", attrs, f"{node.name}: gathers {len(index)} of {width} channels (each copy next to its channel)"
    what = (f"channel shuffle (groups={node.attrs['groups']})" if node.op == "channel_shuffle"
            else f"slice of channels {node.attrs['start']}..{node.attrs['end'] - 1}")
    return "channel_gather", attrs, (f"{node.name}: {what} -> channel_gather of {len(index)} of {width} channels "
                                     f"(the same channels, each copy next to its channel)")


def _coupling_note(flow: ChannelFlow, name: str) -> str:
    via = flow.sources[name]
    if not via:
        return ""
    n, segs = flow.width, flow.segments[name]
    if len(segs) == 1 and isinstance(segs[0], Segment) and segs[0].start == 0 and segs[0].end(n) == flow.channels[name]:
        part = f" in blocks of {segs[0].block}," if segs[0].block > 1 else ""
    else:
        part = " its " + ", ".join(f"{'channels' if s.block == 1 else 'columns'} {s.start}..{s.end(n) - 1}"
                                   for s in segs) + ","
    return f" (coupled to {flow.layer} through {via}:{part} same mapping)"


def _join_note(node, flows: list, remap) -> str:
    old, new = node.type.channels, len(remap.index)
    if node.op == "add":
        coupled = [s for flow in flows for s in flow.couplings.get(node.name, ())]
        note = f"; widens {', '.join(coupled)} with the same mapping" if coupled else ""
        return f"{node.name}: {old} -> {new} {_unit(node)} (all inputs remapped alike{note})"
    facts = sorted((f for flow in flows for f in flow.segments[node.name]), key=lambda f: f.start)
    if any(not isinstance(f, Segment) for f in facts):
        return f"{node.name}: {old} -> {new} {_unit(node)} (copies next to their channels, the rest in order)"
    starts = ", ".join(str(s.start) for s in facts)
    return f"{node.name}: {old} -> {new} {_unit(node)} (segment at offset {starts} widened, later ones shifted)"


def _remap_consumer(node, weights: dict, remap, blocks: list, noise: float, rng) -> str:
    """Gather the consumer's input axis (1) by g, divide by copy counts, add noise to new copies' columns."""
    original = weights["weight"]
    groups = node.attrs.get("groups", 1) if node.op == "conv2d" else 1
    if groups > 1:  # each group's rows gather within the group's block of columns (see channels.py)
        old_c, new_c, o = original.shape[1], len(remap.index) // groups, original.shape[0] // groups
        blocks = []
        for i in range(groups):
            cols = slice(i * new_c, (i + 1) * new_c)
            block = np.take(original[i * o:(i + 1) * o].astype(np.float64), remap.index[cols] - i * old_c, axis=1)
            block /= remap.divisor[cols].reshape(1, -1, 1, 1)
            if noise > 0:
                new = remap.new[cols]
                block[:, new] += rng.normal(0.0, noise * float(np.std(original)), size=block[:, new].shape)
            blocks.append(block)
        w = np.concatenate(blocks).astype(np.float32)
    else:
        # float32 throughout: a division is correctly rounded in float32 as it is in float64, so computing in
        # float64 and rounding back gave the same weights (up to a double rounding) at twice the memory and time
        w = np.take(original, remap.index, axis=1)
        shape = (1, -1) + (1,) * (w.ndim - 2)
        np.divide(w, remap.divisor.astype(np.float32).reshape(shape), out=w)  # in place; dividing by 1 is exact
        if noise > 0:
            std = float(np.std(original, dtype=np.float64))  # accumulated in float64, without a float64 copy
            w[:, remap.new] += rng.normal(0.0, noise * std, size=w[:, remap.new].shape).astype(np.float32)
    weights["weight"] = owned(w)
    old, new = original.shape[1], w.shape[1]
    note = f"; noise {noise:g} x std on the {int(remap.new.sum())} new {'channels' if node.op == 'conv2d' else 'columns'}" \
        if noise > 0 else ""
    if node.op == "conv2d":
        return f"{node.name}: input channels remapped ({old} -> {new}{note})"
    if blocks != [1]:
        return (f"{node.name}: input columns remapped in blocks of {'/'.join(map(str, blocks))} "
                f"({old} -> {new}{note})")
    return f"{node.name}: input columns remapped ({old} -> {new}{note})"
