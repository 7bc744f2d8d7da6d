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
anything else there (a graph input, a softmax, a concat whose inputs a segment straddles) is refused.
The forward walk stops at conv2d / linear consumers, the *sinks*, whose input columns are gathered and
divided by copy counts. A value carrying the channels that is a graph output, or an op without a rule
(softmax, ...) is refused with a reason.

Rearrangements: channel shuffles, gathers, and splits that cut the channels
---------------------------------------------------------------------------
A slice [a, b), a `channel_shuffle(G)` and a `channel_gather(index)` all read output column k from a fixed
input column I(k): I = a + k for a slice, I(j G + i) = i (C/G) + j for a shuffle (`ops.shuffle_index`),
I = index for a gather. After them the channels need not form a segment any more: a shuffle interleaves
them with other channels, and a split may keep only some of them (ShuffleNet's `chunk(2)` after a shuffle
takes every other channel of each half). Such a placement is a `Scatter`: channel chans[i] at column
cols[i] (blocks as above), any subset of the n channels, in any order, possibly repeated. The rules are

    rearrangement I            input carries channel c at column p  <=>  output carries c at every k with I(k) = p

(forward: the output's occurrences are the k reading an occupied column; backward: the input's are the
I(k) of the output's occurrences). A placement that is exactly a segment is always written as a Segment.

Layouts. A value's new axis 1 under g is fixed by its placement alone (`ChannelFlow.remap`), which is what
keeps every op consistent without inserting anything but gathers:

    Segment at s:              columns s + g(0..m-1) in g's order: the originals in place, then the copies
    Scatter occurrence (p, c): the columns of every unit j with g(j) = c, in increasing j (the original
                               first, then its copies), at p's place: each copy sits right after its original
    any other column:          itself

Both rules are local (each occurrence or segment is laid out inside its own span), so channel-wise ops,
depthwise convs, adds, muls, concats and flattens map the layout of their inputs onto exactly the layout
of their output, and a layer gathering its rows by its output's layout computes unit j at the place its
readers expect. A rearrangement is not local: write each new column of a value as (old column, unit),
u = -1 for a column that carries none of the channels. The rearrangement's new output column (k, u) must
hold what input column I(k) held for unit u, which sits at the new input position P(I(k), u); so the new
op is the gather

    I'(k, u) = P(I(k), u)   for the new output columns (k, u) in the output's layout order,

and it is written as the original op when it still is one: a slice when I' is a contiguous range (always,
for a slice of a Scatter, since each occurrence expands in place), a `channel_shuffle(G)` when I' is the
shuffle of the new width, otherwise a `channel_gather(I')`. A consumer reading the output then gathers
its input columns by the output's layout and divides each by c(g(u)), so its sum is unchanged:
sum over the copies u of c of V[:, k] / c(c) * h_c = V[:, k] h_c. Occurrence by occurrence, every value
downstream holds exactly its old channels plus copies of them, so the function is unchanged.

Worked example, a ShuffleNetV2 unit: y = shuffle_2(concat(x1, L)) with x1 and L both C/2 wide, L widened to
m by g. The concat's inputs map by id (x1) and g (L), so its new columns are x1's C/2 then C/2 + g(j) for
j = 0..m-1 (the Segment rule). The shuffle's permutation puts old column C/2 + c at 2c + 1, so y carries L's
channel c at 2c + 1 (a Scatter) and y's new layout is, for k = 0..C-1, column k itself when k is even and the
units of c = (k - 1)/2 (original, then copies) when it is odd. The composed map on y's new columns is
(k, u) -> P(pi(k), u), which is no shuffle of C/2 + m channels unless no unit was copied: the shuffle becomes a
gather. The next unit's chunk(2) slices [0, C/2) and [C/2, C) of y; each holds half of L's channels, and
since every occurrence expanded in place both stay slices (with moved bounds). The branch conv reading the
second half gathers its input columns by that half's layout and divides them by c(g(u)); the first half
goes on into the next concat and shuffle, which are rewritten the same way. A placement reached forwards
(from the rearrangement's input) is the image of the input's and asks nothing back of it; only a placement
reached from a reader (through an add's backward rule) is pushed back through the inverse. A block of a
flatten cut by a rearrangement, or a Scatter reaching an add that another path lays out differently, is
refused; so is a Scatter meeting a grouped conv (copies would cross its groups).

Grouped convs (groups G, not depthwise) are widened group-consistently: a grouped conv reading all n
channels, or producing them, sees them as G blocks of n/G, and a copy must stay in its original's block
(a row of group i only reads input group i). The flow records G (`ChannelFlow.groups`); the mapping g then
widens every block by the same number of copies drawn from that block and lays each block's copies right
after it, so the layout stays G equal blocks. A grouped conv reading only part of the channels, or two
different group counts, is refused.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass

import numpy as np

from easc.ir import OPS, Graph, IRError, LAYER_OPS
from easc.ir.ops import shuffle_index


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
class Scatter:
    """Channel chans[i] of the group sits at columns `cols[i] + [0, block)` of a value's axis 1 (cols ascending):
    any subset of the channels, in any order, possibly repeated (after a shuffle, a gather or a cutting split)."""

    cols: tuple
    chans: tuple
    block: int = 1

    @property
    def start(self) -> int:
        return self.cols[0]

    def end(self, n: int) -> int:
        return self.cols[-1] + self.block


def occurrences(fact, n: int) -> tuple:
    """(columns, channels) of a Segment or Scatter: channel chans[i] starts at column cols[i]."""
    if isinstance(fact, Segment):
        return fact.start + np.arange(n) * fact.block, np.arange(n)
    return np.asarray(fact.cols, dtype=np.int64), np.asarray(fact.chans, dtype=np.int64)


def _make_fact(cols, chans, block: int, n: int):
    """The placement of channels `chans` at columns `cols`: a Segment when it is one, None when empty."""
    cols, chans = np.asarray(cols, dtype=np.int64), np.asarray(chans, dtype=np.int64)
    if not len(cols):
        return None
    order = np.argsort(cols, kind="stable")
    cols, chans = cols[order], chans[order]
    if len(cols) == n and np.array_equal(chans, np.arange(n)) and np.array_equal(cols, cols[0] + np.arange(n) * block):
        return Segment(int(cols[0]), block)
    return Scatter(tuple(int(c) for c in cols), tuple(int(c) for c in chans), block)


def _span(fact, n: int) -> np.ndarray:
    cols, _ = occurrences(fact, n)
    return (cols[:, None] + np.arange(fact.block)[None, :]).ravel()


def rearrangement(node, in_channels: int) -> np.ndarray | None:
    """I(k), the input column output column k of a slice / channel shuffle / channel gather reads (else None)."""
    if node.op == "slice":
        return np.arange(node.attrs["start"], node.attrs["end"])
    if node.op == "channel_shuffle":
        return np.asarray(shuffle_index(in_channels, node.attrs["groups"]), dtype=np.int64)
    if node.op == "channel_gather":
        return np.asarray(node.attrs["index"], dtype=np.int64)
    return None


class _CutBlock(Exception):
    pass


def _forward(fact, n: int, index: np.ndarray, size: int):
    """The placement on a rearrangement's output, given its input's (see the module doc); None if empty."""
    chan = np.full(size, -1)
    offset = np.zeros(size, dtype=np.int64)
    cols, chans = occurrences(fact, n)
    for p, c in zip(cols, chans):
        chan[p:p + fact.block] = c
        offset[p:p + fact.block] = np.arange(fact.block)
    out_chan, out_off = chan[index], offset[index]
    starts = np.flatnonzero((out_chan >= 0) & (out_off == 0))
    covered = np.zeros(len(index), dtype=bool)
    for k in starts:
        run = slice(k, k + fact.block)
        if k + fact.block > len(index) or not (np.all(out_chan[run] == out_chan[k])
                                                and np.array_equal(out_off[run], np.arange(fact.block))):
            raise _CutBlock()
        covered[run] = True
    if np.any((out_chan >= 0) & ~covered):
        raise _CutBlock()
    return _make_fact(starts, out_chan[starts], fact.block, n)


def _backward(fact, n: int, index: np.ndarray):
    """The placement a rearrangement's input must have for its output to carry `fact`."""
    cols, chans = occurrences(fact, n)
    starts = []
    for k in cols:
        src = index[k:k + fact.block]
        if not np.array_equal(src, src[0] + np.arange(fact.block)):
            raise _CutBlock()
        starts.append(int(src[0]))
    if len(set(starts)) != len(starts):
        raise _CutBlock()
    return _make_fact(starts, chans, fact.block, n)


@dataclass(frozen=True)
class Remap:
    """How one value's axis 1 changes under a mapping g.

    index:   for each new column, the old column it copies (a gather)
    divisor: for each new column, how many copies its source unit has (1 outside the segments);
             a consumer divides its input weights by it so that its sums are unchanged
    new:     True for the columns of the new copies (units n..m-1)
    unit:    for each new column, the unit j of the mapping it holds (-1 outside the channels)
    """

    index: np.ndarray
    divisor: np.ndarray
    new: np.ndarray
    unit: np.ndarray | None = None

    @staticmethod
    def identity(size: int) -> "Remap":
        return Remap(np.arange(size), np.ones(size, dtype=np.int64), np.zeros(size, dtype=bool),
                     np.full(size, -1, dtype=np.int64))


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
        """The gather of `value`'s axis 1 under the mapping g (len(g) = m >= n; see "Layouts" in the module doc)."""
        return self.remaps(g, [value])[value]

    def remaps(self, g: np.ndarray, values=None) -> dict:
        """`remap` of each of `values` (default: every value carrying the channels), value -> Remap.

        The mapping's copy counts are worked out once, and values that carry the channels at the same places
        and have the same width share one Remap (a dense block exported as a chain of concatenations puts a
        layer's channels at the same offset of every later one)."""
        g = np.asarray(g, dtype=np.int64)
        counts = np.bincount(g, minlength=self.width)
        copies = _copies(g)
        out, alike = {}, {}
        for value in (self.segments if values is None else values):
            key = (self.segments[value], self.channels[value])
            if key not in alike:
                alike[key] = self._remap(value, g, counts, copies)
            out[value] = alike[key]
        return out

    def _remap(self, value: str, g: np.ndarray, counts: np.ndarray, copies: np.ndarray) -> Remap:
        return _assemble(self._pieces(value, g, counts, copies), self.channels[value])

    def _pieces(self, value: str, g: np.ndarray, counts: np.ndarray, copies: np.ndarray) -> list:
        """The new columns of each place on `value` that carries the channels, in old column order:
        [(first old column, old column after it, index, divisor, new, unit)] (the fields of `Remap`)."""
        n = self.width
        units = None  # units[c]: the j with g(j) = c, increasing; only scattered channels need them
        places = []  # (first column, fact, channel or None for a whole segment)
        for fact in self.segments[value]:
            if isinstance(fact, Segment):
                places.append((fact.start, fact, None))
            else:
                places += [(int(p), fact, int(c)) for p, c in zip(fact.cols, fact.chans)]
        pieces = []
        for start, fact, c in sorted(places, key=lambda place: place[0]):
            within = np.arange(fact.block)
            if c is not None and units is None:  # a stable sort groups the j by c, the original first
                units = np.split(np.argsort(g, kind="stable"), np.cumsum(counts)[:-1])
            js = np.arange(len(g)) if c is None else units[c]
            base = start + g[js] * fact.block if c is None else np.full(len(js), start)
            pieces.append((start, start + (n * fact.block if c is None else fact.block),
                           (base[:, None] + within[None, :]).ravel(), np.repeat(counts[g[js]], fact.block),
                           np.repeat(copies[js], fact.block), np.repeat(js, fact.block)))
        return pieces

    def has_scatter(self) -> bool:
        """Whether the channels reach a placement other than whole segments (a shuffle, gather or cutting split)."""
        return any(isinstance(f, Scatter) for facts in self.segments.values() for f in facts)


def _copies(g: np.ndarray) -> np.ndarray:
    """True for the columns of g that repeat a unit seen earlier: the new copies."""
    first = np.zeros(len(g), dtype=bool)
    first[np.unique(g, return_index=True)[1]] = True
    return ~first


def _assemble(pieces: list, channels: int) -> Remap:
    """A value's `Remap` from the new columns of the places that carry channels (`ChannelFlow._pieces`), the
    columns between them kept as they are."""
    fields = ([], [], [], [])  # index, divisor, new, unit

    def kept(a: int, b: int) -> None:  # old columns a..b-1 as they are
        for out, field in zip(fields, (np.arange(a, b), np.ones(b - a, dtype=np.int64), np.zeros(b - a, dtype=bool),
                                       np.full(b - a, -1, dtype=np.int64))):
            out.append(field)

    pos = 0
    for start, stop, *placed in sorted(pieces, key=lambda piece: piece[0]):
        kept(pos, start)
        for out, field in zip(fields, placed):
            out.append(field)
        pos = stop
    kept(pos, channels)
    return Remap(*(np.concatenate(a) for a in fields))


def combined_remaps(flows: list) -> dict:
    """The remaps of several flows widened at once, [(ChannelFlow, g)], value -> Remap.

    Each place that carries a flow's channels is laid out inside its own span of old columns ("Layouts" in the
    module doc), so flows whose places are disjoint compose by laying out each span by its own flow: a value
    carrying several flows' channels (a dense block's concatenation, every earlier layer's growth) is gathered
    once. `unit` is then only meaningful per flow; a rearrangement, which needs it, is not combined (the caller
    refuses such flows). Raises `ChannelFlowError` when two flows' places on a value overlap."""
    pieces: dict = {}
    channels: dict = {}
    places: dict = {}  # value -> ((flow, its places there), ...): values placed alike share their pieces and Remap
    for k, (flow, g) in enumerate(flows):
        g = np.asarray(g, dtype=np.int64)
        counts, copies = np.bincount(g, minlength=flow.width), _copies(g)
        alike: dict = {}
        for value, facts in flow.segments.items():
            if facts not in alike:
                alike[facts] = flow._pieces(value, g, counts, copies)
            pieces.setdefault(value, []).extend(alike[facts])
            places.setdefault(value, []).append((k, facts))
            channels[value] = flow.channels[value]
    out, assembled = {}, {}
    for value, here in pieces.items():
        key = (tuple(places[value]), channels[value])  # a dense layer's batchnorm and relu: its concat's layout
        if key not in assembled:
            here.sort(key=lambda piece: piece[0])
            for (_, stop, *_), (start, *_) in zip(here, here[1:]):
                if start < stop:
                    raise ChannelFlowError(f"two widened layers' channels overlap in {value}")
            assembled[key] = _assemble(here, channels[value])
        out[value] = assembled[key]
    return out


def _describe(node) -> str:
    return f"{node.name}, a graph input" if node.op == "input" else f"{node.name} ({node.op})"


def is_depthwise(node) -> bool:
    """A conv2d with one k x k filter per channel: groups = input channels = output channels (its weight
    has one input channel per group)."""
    return node.op == "conv2d" and node.attrs["groups"] > 1 and node.attrs["out"] == node.attrs["groups"] \
        and node.weights["weight"].shape[1] == 1


def _grouped(node) -> bool:
    return node.op == "conv2d" and node.attrs["groups"] > 1 and not is_depthwise(node)


_FLOWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Traced flows by graph: graphs are immutable, so a flow is traced once per graph and layer (a widen asks
for it in `reason`, `added_params` and `apply`); the entries die with their graph."""


def trace_channels(graph: Graph, layer: str, rearrange: bool = True) -> ChannelFlow:
    """`_trace_channels`, once per graph, layer and `rearrange` (the flow is read, never changed, by callers)."""
    flows = _FLOWS.setdefault(graph, {})
    key = (layer, rearrange)
    if key not in flows:
        flows[key] = _trace_channels(graph, layer, rearrange)
    return flows[key]


def _trace_channels(graph: Graph, layer: str, rearrange: bool = True) -> ChannelFlow:
    """Follow `layer`'s output channels forwards and, through adds, backwards (see the module doc).

    With `rearrange=False` the channels must stay whole segments: a channel shuffle or gather, or a slice
    cutting them, is refused (for passes that insert channels rather than copy them, `dense.py`).

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
    work = deque([(layer, Segment(0, 1), "", False)])

    def size(name):
        return graph.node(name).type.channels

    while work:
        value, seg, via, ahead = work.popleft()
        if seg is None:
            continue
        have = segments.setdefault(value, [])
        if seg in have:
            continue
        for other in have:
            if np.intersect1d(_span(seg, n), _span(other, n)).size:
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
        whole = isinstance(seg, Segment)

        # producer side: whatever makes `value` must lay the channels out at `seg`
        moved = rearrangement(node, size(node.inputs[0])) if node.inputs else None
        if is_depthwise(node):
            work.append((node.inputs[0], seg, via, False))
        elif moved is not None and ahead:
            pass  # reached from its input: the placement is the image of the input's, which may hold more
        elif node.op == "slice" and whole:
            work.append((node.inputs[0], Segment(seg.start + node.attrs["start"], seg.block), via, False))
        elif moved is not None and rearrange:  # reached from a reader (an add): the input must hold it
            try:
                work.append((node.inputs[0], _backward(seg, n, moved), via, False))
            except _CutBlock:
                raise ChannelFlowError(f"its output feeds {via} whose other input comes from {_describe(node)}, "
                                       f"which reads the coupled channels from columns it also repeats or "
                                       f"splits; one mapping cannot lay them out for both") from None
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
            work.append((node.inputs[0], seg, via, False))
        elif node.op in ("add", "mul"):
            for i in dict.fromkeys(node.inputs):
                work.append((i, seg, value, False))
        elif node.op == "concat" and not whole:
            cols, chans = occurrences(seg, n)
            offset = 0
            for i in node.inputs:
                inside = (cols >= offset) & (cols < offset + size(i))
                if np.any(inside & (cols + seg.block > offset + size(i))):
                    raise ChannelFlowError(f"its output feeds {via} whose other input comes from {node.name} "
                                           f"(concat), whose inputs cut a block of the coupled channels")
                work.append((i, _make_fact(cols[inside] - offset, chans[inside], seg.block, n), via, False))
                offset += size(i)
        elif node.op == "concat":
            offset = 0
            for i in node.inputs:
                if offset <= seg.start and seg.end(n) <= offset + size(i):
                    work.append((i, Segment(seg.start - offset, seg.block), via, False))
                    break
                offset += size(i)
            else:
                raise ChannelFlowError(
                    f"its output feeds {via} whose other input comes from {node.name} (concat), where the "
                    f"{n} coupled channels (from column {seg.start}) span several of the concat's inputs; "
                    f"widen cannot split one mapping between them")
        elif node.op == "flatten" and graph.node(node.inputs[0]).type.rank == 2:
            work.append((node.inputs[0], seg, via, False))
        elif node.op == "flatten":
            src = graph.node(node.inputs[0]).type
            hw = math.prod(src.shape[2:])
            cols, chans = occurrences(seg, n)
            if seg.block != hw or np.any(cols % hw):
                raise ChannelFlowError(f"its output feeds {via} whose other input comes from {node.name} "
                                       f"(flatten), whose columns do not line up with whole channels of "
                                       f"{node.inputs[0]}")
            work.append((node.inputs[0], _make_fact(cols // hw, chans, 1, n), via, False))
        else:
            where = f"its output feeds {via} whose other input comes from" if via else "its channels come from"
            raise ChannelFlowError(f"{where} {_describe(node)}, which cannot be widened; only conv2d and "
                                   f"linear layers can be widened together")

        # consumer side: every reader of `value` sees the channels at `seg`
        for c in graph.consumers(value):
            cnode = graph.node(c)
            moved = rearrangement(cnode, node.type.channels)
            if is_depthwise(cnode):
                work.append((c, seg, "", True))
            elif cnode.op == "slice" and whole and cnode.attrs["start"] <= seg.start \
                    and seg.end(n) <= cnode.attrs["end"]:
                work.append((c, Segment(seg.start - cnode.attrs["start"], seg.block), "", True))
            elif moved is not None and rearrange:
                try:
                    work.append((c, _forward(seg, n, moved, node.type.channels), "", True))
                except _CutBlock:
                    raise ChannelFlowError(f"{c} ({cnode.op}) cuts the columns of one of its channels (blocks of "
                                           f"{seg.block} in {value}); one mapping cannot widen the parts") from None
            elif cnode.op == "slice":
                a, b = cnode.attrs["start"], cnode.attrs["end"]
                if seg.end(n) > a and seg.start < b:
                    raise ChannelFlowError(f"its channels (columns {seg.start}..{seg.end(n) - 1} of {value}) straddle "
                                           f"the edge of {c}, a slice of channels {a}..{b - 1}; one mapping cannot "
                                           f"widen both parts")
            elif moved is not None:
                raise ChannelFlowError(f"its channels reach {c}, a channel {cnode.op.split('_')[1]}, which "
                                       f"rearranges them among other channels")
            elif cnode.op in LAYER_OPS:
                if _grouped(cnode):
                    partial = seg != Segment(0, 1) or node.type.channels != n
                    need_groups(cnode, f"its channels are part of the input of {c}, a grouped conv (groups="
                                       f"{cnode.attrs['groups']}): copies would make its groups unequal"
                                if partial else "")
                consumers.setdefault(c, None)
            elif OPS[cnode.op].channelwise or cnode.op in ("add", "mul"):
                work.append((c, seg, "", True))
            elif cnode.op == "flatten":
                src = node.type
                if src.rank == 2:
                    work.append((c, seg, "", True))
                else:
                    hw = math.prod(src.shape[2:])
                    cols, chans = occurrences(seg, n)
                    work.append((c, _make_fact(cols * hw, chans, hw, n), "", True))
            elif cnode.op == "concat":
                offset = 0
                for i in cnode.inputs:
                    if i == value:
                        cols, chans = occurrences(seg, n)
                        work.append((c, _make_fact(cols + offset, chans, seg.block, n), "", True))
                    offset += size(i)
            else:
                raise ChannelFlowError(f"its channels reach {_describe(cnode)}, which widen cannot remap")

    order = {node.name: k for k, node in enumerate(graph.nodes)}
    by_order = lambda names: sorted(names, key=order.__getitem__)  # noqa: E731
    return ChannelFlow(
        layer=layer,
        width=n,
        segments={v: tuple(sorted(segments[v], key=lambda f: f.start)) for v in by_order(segments)},
        channels={v: size(v) for v in by_order(segments)},
        sources={s: sources[s] for s in by_order(sources)},
        consumers=tuple(by_order(consumers)),
        couplings={a: tuple(by_order(couplings[a])) for a in by_order(couplings)},
        groups=groups[0] if groups else 1,
    )
