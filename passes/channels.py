"""Channel flow: where a layer's output channels travel, and which other layers must share their order.

Widening a layer (n -> m units) changes every value that carries its channels. This module finds those
values, says where the channels sit in each of them, and turns a unit mapping g into the column gather
that every affected weight needs. It knows nothing about how g is chosen (that is `widen.py`).

The layer's n channels are followed as a *segment* of a value's axis 1 (written in the old graph's
coordinates): `Segment(start, block)` says that channel c of the group occupies the columns
`start + c * block + [0, block)`. On NCHW and NC values block is 1; a flatten turns channel c of an
(N, C, H, W) value into the H*W columns [c HW, (c+1) HW), so after it block = H*W. A value may carry
several segments (concat(x, x) carries x's channels twice); all of them are widened with the same g.

The flow is the least set of (value, segment) facts closed under these rules, each an "if and only if":

    channel-wise op (OPS[op].channelwise)   input carries S        <=>  output carries S
    depthwise conv (groups = in = out)      input carries S        <=>  output carries S
    flatten of (N, C, H, W)                 input carries (s, 1)   <=>  output carries (s HW, HW)
    concat                                  input k carries S      <=>  output carries S shifted by the
                                                                        channels of inputs 0..k-1
    slice [a, b) (a channel split)          input carries S in [a, b)  <=>  output carries S shifted by -a
    add, mul                                every input carries S  <=>  output carries S

A depthwise conv filters each channel on its own, so a copied channel takes a copy of its filter (and bias)
and the conv stays depthwise with groups = out = the new width. Through mul the gate of a squeeze-excitation
block, (N, C, 1, 1), is one of the inputs: the rule couples the excite conv producing it to the trunk, so
the gate of a copied channel is the copy of its gate, while the squeeze conv reading the pooled trunk is an
ordinary consumer. A slice that holds none of the channels only moves when they sit before it.

The backward half of the add rule is what couples layers: channels summed by a residual add must be
laid out identically on every input, so the producer of each other input gets widened with the same g.
The backward walk stops at conv2d / linear nodes, which become *sources* (their output rows are gathered);
anything else there (a graph input, a softmax, a concat whose inputs the segment straddles) is refused.
The forward walk stops at conv2d / linear consumers, the *sinks*, whose input columns are gathered and
divided by copy counts. A value carrying the channels that is a graph output, an op without a rule above
(softmax, ...) and a channel shuffle are refused with a reason: a shuffle interleaves equal groups, and
widening one group alone would move the other groups' channels.

Grouped convs (groups G, not depthwise) are widened group-consistently: a grouped conv reading all n
channels, or producing them, sees them as G blocks of n/G, and a copy must stay in its original's block
(a row of group i only reads input group i). The flow records G (`ChannelFlow.groups`); the mapping g then
widens every block by the same number of copies drawn from that block and lays each block's copies right
after it, so the layout stays G equal blocks. A grouped conv reading only part of the channels, or two
different group counts, is refused.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from easc.ir import OPS, Graph, IRError, LAYER_OPS


class ChannelFlowError(IRError):
    """The channels cannot be followed; the message says where, phrased about the layer ("its output ...")."""


@dataclass(frozen=True, order=True)
class Segment:
    """Channel c of the group sits at columns `start + c * block + [0, block)` of a value's axis 1."""

    start: int
    block: int = 1

    def end(self, n: int) -> int:
        return self.start + n * self.block


@dataclass(frozen=True)
class Remap:
    """How one value's axis 1 changes under a mapping g.

    index:   for each new column, the old column it copies (a gather)
    divisor: for each new column, how many copies its source unit has (1 outside the segments);
             a consumer divides its input weights by it so that its sums are unchanged
    new:     True for the columns of the new copies (units n..m-1)
    """

    index: np.ndarray
    divisor: np.ndarray
    new: np.ndarray


@dataclass
class ChannelFlow:
    """The values that carry a layer's channels and the layers that must change with it.

    layer:     the layer whose output channels are followed
    width:     its channel count n
    segments:  value name -> sorted tuple of Segments, in graph order
    channels:  value name -> its old size of axis 1
    sources:   layer name -> the add that coupled it to `layer` ("" for `layer` itself); output rows gathered
    consumers: conv2d / linear layers reading a value that carries the channels; input columns gathered
    couplings: add name -> the sources reached backwards through it
    groups:    G when a grouped conv reads or produces all the channels (g must keep G equal blocks), else 1
    """

    layer: str
    width: int
    segments: dict
    channels: dict
    sources: dict
    consumers: tuple
    couplings: dict
    groups: int = 1

    def remap(self, value: str, g: np.ndarray) -> Remap:
        """The gather of `value`'s axis 1 under the mapping g (len(g) = m >= n, g[:n] = 0..n-1)."""
        n, g = self.width, np.asarray(g, dtype=np.int64)
        counts = np.bincount(g, minlength=n)
        index, divisor, new = [], [], []
        pos = 0
        for seg in self.segments[value]:
            index.append(np.arange(pos, seg.start))
            divisor.append(np.ones(seg.start - pos, dtype=np.int64))
            new.append(np.zeros(seg.start - pos, dtype=bool))
            within = np.arange(seg.block)
            index.append((seg.start + g[:, None] * seg.block + within[None, :]).ravel())
            divisor.append(np.repeat(counts[g], seg.block))
            new.append(np.repeat(_copies(g), seg.block))
            pos = seg.end(n)
        size = self.channels[value]
        index.append(np.arange(pos, size))
        divisor.append(np.ones(size - pos, dtype=np.int64))
        new.append(np.zeros(size - pos, dtype=bool))
        return Remap(np.concatenate(index).astype(np.int64), np.concatenate(divisor), np.concatenate(new))


def _copies(g: np.ndarray) -> np.ndarray:
    """True for the columns of g that repeat a unit seen earlier: the new copies."""
    first = np.zeros(len(g), dtype=bool)
    first[np.unique(g, return_index=True)[1]] = True
    return ~first


def _describe(node) -> str:
    return f"{node.name}, a graph input" if node.op == "input" else f"{node.name} ({node.op})"


def is_depthwise(node) -> bool:
    """A conv2d with one k x k filter per channel: groups = input channels = output channels (its weight
    has one input channel per group)."""
    return node.op == "conv2d" and node.attrs["groups"] > 1 and node.attrs["out"] == node.attrs["groups"] \
        and node.weights["weight"].shape[1] == 1


def _grouped(node) -> bool:
    return node.op == "conv2d" and node.attrs["groups"] > 1 and not is_depthwise(node)


def trace_channels(graph: Graph, layer: str) -> ChannelFlow:
    """Follow `layer`'s output channels forwards and, through adds, backwards (see the module doc).

    Raises `ChannelFlowError` when the channels reach something widening cannot remap. The walk is a
    FIFO worklist over graph-ordered lists, so the result and the first reported problem are reproducible.
    """
    start = graph.node(layer)
    if start.op not in LAYER_OPS:
        raise ChannelFlowError(f"it is a {start.op}, not a conv2d or linear layer")
    if is_depthwise(start):
        raise ChannelFlowError(f"it is a depthwise conv: its channels are its input's, one filter each; widen "
                               f"the layer producing {start.inputs[0]} and the depthwise conv follows")
    n = start.width
    groups = [start.attrs["groups"]] if _grouped(start) else []

    def need_groups(node, what: str):
        g = node.attrs["groups"]
        if groups and groups[0] != g:
            raise ChannelFlowError(f"its channels meet {node.name}, a grouped conv (groups={g}), and another with "
                                   f"groups={groups[0]}; one mapping cannot keep both groupings")
        if what:
            raise ChannelFlowError(what)
        groups[:1] = [g]
    segments: dict = {}
    sources: dict = {}
    consumers: dict = {}
    couplings: dict = {}
    work = deque([(layer, Segment(0, 1), "")])

    def size(name):
        return graph.node(name).type.channels

    while work:
        value, seg, via = work.popleft()
        have = segments.setdefault(value, [])
        if seg in have:
            continue
        for other in have:
            if seg.start < other.end(n) and other.start < seg.end(n):
                raise ChannelFlowError(f"its channels reach {value} twice at overlapping positions "
                                       f"(columns {other.start}.. and {seg.start}..); one mapping cannot "
                                       f"widen both")
        have.append(seg)
        public = graph.output_names_of(value)
        if public:
            if value == layer:
                raise ChannelFlowError(f"it produces the graph output {public[0]!r}; widening it would "
                                       f"change the output's shape")
            raise ChannelFlowError(f"its channels reach the graph output {public[0]!r} (node {value}); "
                                   f"widening would change the output's shape")
        node = graph.node(value)

        # producer side: whatever makes `value` must lay the channels out at `seg`
        if is_depthwise(node):
            work.append((node.inputs[0], seg, via))
        elif node.op == "slice":
            work.append((node.inputs[0], Segment(seg.start + node.attrs["start"], seg.block), via))
        elif node.op in LAYER_OPS:
            if _grouped(node):
                partial = seg != Segment(0, 1) or node.width != n
                need_groups(node, f"its output feeds {via} whose other input comes from {node.name}, a grouped "
                                  f"conv (groups={node.attrs['groups']}) of another width; widen both or neither"
                            if partial else "")
            if node.name not in sources:
                sources[node.name] = via
                if via:
                    couplings.setdefault(via, []).append(node.name)
        elif OPS[node.op].channelwise:
            work.append((node.inputs[0], seg, via))
        elif node.op in ("add", "mul"):
            for i in dict.fromkeys(node.inputs):
                work.append((i, seg, value))
        elif node.op == "concat":
            offset = 0
            for i in node.inputs:
                if offset <= seg.start and seg.end(n) <= offset + size(i):
                    work.append((i, Segment(seg.start - offset, seg.block), via))
                    break
                offset += size(i)
            else:
                raise ChannelFlowError(
                    f"its output feeds {via} whose other input comes from {node.name} (concat), where the "
                    f"{n} coupled channels (from column {seg.start}) span several of the concat's inputs; "
                    f"widen cannot split one mapping between them")
        elif node.op == "flatten" and graph.node(node.inputs[0]).type.rank == 2:
            work.append((node.inputs[0], seg, via))
        elif node.op == "flatten":
            src = graph.node(node.inputs[0]).type
            hw = math.prod(src.shape[2:])
            if seg.block != hw or seg.start % hw:
                raise ChannelFlowError(f"its output feeds {via} whose other input comes from {node.name} "
                                       f"(flatten), whose columns do not line up with whole channels of "
                                       f"{node.inputs[0]}")
            work.append((node.inputs[0], Segment(seg.start // hw, 1), via))
        else:
            where = f"its output feeds {via} whose other input comes from" if via else "its channels come from"
            raise ChannelFlowError(f"{where} {_describe(node)}, which cannot be widened; only conv2d and "
                                   f"linear layers can be widened together")

        # consumer side: every reader of `value` sees the channels at `seg`
        for c in graph.consumers(value):
            cnode = graph.node(c)
            if is_depthwise(cnode):
                work.append((c, seg, ""))
            elif cnode.op == "slice":
                a, b = cnode.attrs["start"], cnode.attrs["end"]
                if a <= seg.start and seg.end(n) <= b:
                    work.append((c, Segment(seg.start - a, seg.block), ""))
                elif seg.end(n) > a and seg.start < b:
                    raise ChannelFlowError(f"its channels (columns {seg.start}..{seg.end(n) - 1} of {value}) straddle "
                                           f"the edge of {c}, a slice of channels {a}..{b - 1}; one mapping cannot "
                                           f"widen both parts")
            elif cnode.op == "channel_shuffle":
                raise ChannelFlowError(f"its channels reach {c}, a channel shuffle (groups={cnode.attrs['groups']}), "
                                       f"which interleaves equal groups: widening one group alone would move the "
                                       f"other groups' channels")
            elif cnode.op in LAYER_OPS:
                if _grouped(cnode):
                    partial = seg != Segment(0, 1) or node.type.channels != n
                    need_groups(cnode, f"its channels are part of the input of {c}, a grouped conv (groups="
                                       f"{cnode.attrs['groups']}): copies would make its groups unequal"
                                if partial else "")
                consumers.setdefault(c, None)
            elif OPS[cnode.op].channelwise or cnode.op in ("add", "mul"):
                work.append((c, seg, ""))
            elif cnode.op == "flatten":
                src = node.type
                if src.rank == 2:
                    work.append((c, seg, ""))
                else:
                    hw = math.prod(src.shape[2:])
                    work.append((c, Segment(seg.start * hw, hw), ""))
            elif cnode.op == "concat":
                offset = 0
                for i in cnode.inputs:
                    if i == value:
                        work.append((c, Segment(offset + seg.start, seg.block), ""))
                    offset += size(i)
            else:
                raise ChannelFlowError(f"its channels reach {_describe(cnode)}, which widen cannot remap")

    order = {node.name: k for k, node in enumerate(graph.nodes)}
    by_order = lambda names: sorted(names, key=order.__getitem__)  # noqa: E731
    return ChannelFlow(
        layer=layer,
        width=n,
        segments={v: tuple(sorted(segments[v])) for v in by_order(segments)},
        channels={v: size(v) for v in by_order(segments)},
        sources={s: sources[s] for s in by_order(sources)},
        consumers=tuple(by_order(consumers)),
        couplings={a: tuple(by_order(couplings[a])) for a in by_order(couplings)},
        groups=groups[0] if groups else 1,
    )
