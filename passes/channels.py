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
    flatten of (N, C, H, W)                 input carries (s, 1)   <=>  output carries (s HW, HW)
    concat                                  input k carries S      <=>  output carries S shifted by the
                                                                        channels of inputs 0..k-1
    add                                     every input carries S  <=>  output carries S

The backward half of the add rule is what couples layers: channels summed by a residual add must be
laid out identically on every input, so the producer of each other input gets widened with the same g.
The backward walk stops at conv2d / linear nodes, which become *sources* (their output rows are gathered);
anything else there (a graph input, a softmax, a concat whose inputs the segment straddles) is refused.
The forward walk stops at conv2d / linear consumers, the *sinks*, whose input columns are gathered and
divided by copy counts. A value carrying the channels that is a graph output, an op without a rule above
(softmax, ...), and grouped convolutions on either side are refused with a reason.
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
    """

    layer: str
    width: int
    segments: dict
    channels: dict
    sources: dict
    consumers: tuple
    couplings: dict

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
            new.append(np.repeat(np.arange(len(g)) >= n, seg.block))
            pos = seg.end(n)
        size = self.channels[value]
        index.append(np.arange(pos, size))
        divisor.append(np.ones(size - pos, dtype=np.int64))
        new.append(np.zeros(size - pos, dtype=bool))
        return Remap(np.concatenate(index).astype(np.int64), np.concatenate(divisor), np.concatenate(new))


def _describe(node) -> str:
    return f"{node.name}, a graph input" if node.op == "input" else f"{node.name} ({node.op})"


def _grouped(node) -> bool:
    return node.op == "conv2d" and node.attrs["groups"] > 1


def trace_channels(graph: Graph, layer: str) -> ChannelFlow:
    """Follow `layer`'s output channels forwards and, through adds, backwards (see the module doc).

    Raises `ChannelFlowError` when the channels reach something widening cannot remap. The walk is a
    FIFO worklist over graph-ordered lists, so the result and the first reported problem are reproducible.
    """
    start = graph.node(layer)
    if start.op not in LAYER_OPS:
        raise ChannelFlowError(f"it is a {start.op}, not a conv2d or linear layer")
    if _grouped(start):
        raise ChannelFlowError(f"it is a grouped conv (groups={start.attrs['groups']}); "
                               f"widen does not gather grouped output channels")
    n = start.width
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
        if node.op in LAYER_OPS:
            if _grouped(node):
                raise ChannelFlowError(f"its output feeds {via} whose other input comes from {node.name}, "
                                       f"a grouped conv (groups={node.attrs['groups']}) whose output "
                                       f"channels widen does not gather; widen both or neither")
            if node.name not in sources:
                sources[node.name] = via
                if via:
                    couplings.setdefault(via, []).append(node.name)
        elif OPS[node.op].channelwise:
            work.append((node.inputs[0], seg, via))
        elif node.op == "add":
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
            if cnode.op in LAYER_OPS:
                if _grouped(cnode):
                    raise ChannelFlowError(f"its channels feed {c}, a grouped conv (groups="
                                           f"{cnode.attrs['groups']}), whose input channels widen does not remap")
                consumers.setdefault(c, None)
            elif OPS[cnode.op].channelwise or cnode.op == "add":
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
    )
