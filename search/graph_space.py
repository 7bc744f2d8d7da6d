"""The graph search space: layer tokens and blocks derived from any IR graph, not only conv-pool chains.

A user's network (a ResNet, a DenseNet, an Inception net imported from ONNX) has no pooling layer between
its stages and no single chain of layers. This space reads what the controller needs from the graph itself:

Tokens
    One token per conv2d (`conv-{width}-{kernel}`) and linear (`fc-{width}`) node. Each layer belongs to the
    resolution of its output: conv layers by their output's H x W, linear layers to the last (fc) level.
    Tokens are ordered by level, from the largest resolution down (stable, so graph order within a level),
    and a `pool` token stands between two levels: **blocks end where the resolution drops**, whatever drops it
    (a pooling node or a strided conv). A strided conv therefore opens the block of its output resolution,
    as does a residual shortcut's 1x1 conv.

Net2Wider and the structure of the graph
    Whether and with what a layer widens comes from the same channel analysis the `widen` pass runs
    (`passes.channels.trace_channels`): channels summed by a residual add must keep one layout, so the add's
    producers form a *group* that the pass widens together with one mapping g; channels entering a concat
    are a segment of it, remapped in every consumer. On the token side a group has one decision: its lead
    (the first of its layers in token order) is widenable, the other members are masked and list the lead
    in `coupled` (with how many times its channels reach them: a residual add over a concat couples a layer
    to a segment of another's output, which then grows by the same number of units, not to the same width).
    So a Bernoulli decision maps to exactly one pass, and the tokens re-encoded after it equal what the token
    simulator `tokens.apply_wider` predicts (a property test checks this on random graphs).
    Channels that pass a grouped conv grow by multiples of its group count (the token's `step`, so the width
    list's next reachable value is the target). Channels that a channel shuffle scatters (ShuffleNet: a
    branch's last conv, whose channels are interleaved with the other branch's and split between the next
    unit's two halves) are widened too; a layer they reach only in part (the depthwise conv of a later
    downsampling unit) grows by the copies the mapping draws from the channels it carries, so it is listed
    with times None: the token simulator cannot predict it, and the search reads it from the graph after the
    pass. Layers the analysis refuses (their channels reach a graph output, a softmax, ...) are masked, as
    are output layers (whose value reaches a graph output without passing another layer: the classifier,
    also behind a softmax).

Net2Deeper
    The new layer goes after the chosen layer's unit (the layer and the batchnorm / relu / dropout nodes
    only it feeds, `encode.unit_end`), inside its block (same resolution: identity conv with `same`
    padding). The `deepen` pass is exact after any NCHW or NC value: it adds a relu only where the value is
    provably non-negative (after a relu, or a pool of one) and otherwise leaves the block linear, e.g. after
    a residual branch's last batchnorm, before the add. A layer whose unit ends in a graph output, or in a
    value of another rank, is masked. The new batchnorm is calibrated on training images (the statistics the
    plain space measures once per parent and carries through the chain).

Every action runs in the plain space's pass manager (verifier + check of the rewritten region on probes).
"""

from __future__ import annotations

from easc.ir import Graph
from easc.ir.ops import LAYER_OPS
from easc.passes.base import PassError
from easc.passes.channels import ChannelFlowError, Segment, trace_channels

from .encode import unit_end
from .plain_space import PlainSpace
from .tokens import LayerToken

FC_LEVEL = -1  # linear layers: after every spatial level


def _level(node) -> int:
    """H * W of a conv's output; FC_LEVEL for a linear layer (tokens are sorted by descending level)."""
    if node.op == "linear" or node.type.rank != 4:
        return FC_LEVEL
    return int(node.type.shape[2]) * int(node.type.shape[3])


def _value_level(node) -> int | None:
    if node.type.rank == 4:
        return int(node.type.shape[2]) * int(node.type.shape[3])
    if node.type.rank == 2:
        return FC_LEVEL
    return None


def _reaches_output(graph: Graph, layer: str) -> bool:
    """Does `layer`'s value reach a graph output without passing another layer (the classifier, or a layer
    whose features are an output)? Such a layer can be neither widened nor followed by a new layer."""
    todo, seen = [layer], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if graph.output_names_of(name):
            return True
        todo.extend(c for c in graph.consumers(name) if graph.node(c).op not in LAYER_OPS)
    return False


def _deepen_point(graph: Graph, layer: str) -> str | None:
    """Where Net2Deeper after `layer` inserts (the end of its unit), or None when it cannot."""
    after = unit_end(graph, layer)
    node = graph.node(after)
    if node.type.rank not in (2, 4) or graph.output_names_of(after) or not graph.consumers(after):
        return None
    return after


def graph_tokens(graph: Graph) -> list:
    """The controller's view of `graph` (see the module doc)."""
    layers = [n for n in graph.nodes if n.op in LAYER_OPS]
    order = sorted(range(len(layers)), key=lambda i: -_level(layers[i]) if _level(layers[i]) != FC_LEVEL
                   else float("inf"))
    layers = [layers[i] for i in order]
    # Name each level boundary after the node where the resolution first drops to the new level.
    first_at = {}
    for node in graph.nodes:
        level = _value_level(node)
        if level is not None and node.op != "input":
            first_at.setdefault(level, node.name)

    # Coupling groups, first: a layer is a lead when no earlier lead's pass widens it; the layers a lead's
    # pass widens along (`flow.sources`) follow it, as often as its channels reach their output.
    outputs = {node.name for node in layers if _reaches_output(graph, node.name)}
    leads, followers, steps = set(), {}, {}
    for node in layers:
        if node.name in outputs or node.name in followers:
            continue
        try:
            flow = trace_channels(graph, node.name)
        except ChannelFlowError:
            continue
        members = {m: segs for m, segs in flow.segments.items() if m != node.name and graph.node(m).op in LAYER_OPS}
        leads.add(node.name)
        steps[node.name] = getattr(flow, "groups", 1)  # through a grouped conv: every group grows alike
        # Every other layer whose output carries the lead's channels grows with it: the producers coupled
        # through adds (flow.sources) and the depthwise convs the channels pass through.
        for member, segments in members.items():
            # A layer that a shuffle hands only some of the channels grows by the copies drawn from those.
            whole = all(isinstance(seg, Segment) or sorted(seg.chans) == list(range(node.width))
                        for seg in segments)
            followers.setdefault(member, []).append((node.name, len(segments) if whole else None))

    tokens, previous = [], None
    for node in layers:
        level = _level(node)
        if previous is not None and level != previous:
            mark = first_at.get(level, node.name)
            tokens.append(LayerToken("pool", 0, 0, f"{mark}:down" if mark in graph and
                                     graph.node(mark).op in LAYER_OPS else mark))
        previous = level
        is_output = node.name in outputs
        common = dict(is_output=is_output, can_widen=node.name in leads,
                      can_deepen=not is_output and _deepen_point(graph, node.name) is not None,
                      coupled=tuple(followers.get(node.name, ())), step=steps.get(node.name, 1))
        if node.op == "conv2d":
            tokens.append(LayerToken("conv", node.width, int(node.attrs["kernel"][0]), node.name, **common))
        else:
            tokens.append(LayerToken("fc", node.width, 0, node.name, **common))
    return tokens


class GraphSpace(PlainSpace):
    """Tokens and blocks from any graph `inspect` accepts; the plain space's passes (see the module doc)."""

    name = "graph"
    default_wider_actions = 4

    def tokens(self, graph: Graph) -> list:
        tokens = graph_tokens(graph)
        if not any(t.kind != "pool" for t in tokens):
            raise PassError(f"{graph.name}: no conv2d or linear layer for the search to grow")
        return tokens

    def apply_deeper(self, graph: Graph, decision, rng, probes, calibration_batch=None):
        """(new graph, action records): Net2Deeper after the end of the chosen layer's unit, through the pass
        manager as in the plain space (the parent's calibration statistics are measured once per chain)."""
        after = _deepen_point(graph, decision.name)
        kernel = decision.kernel if decision.kind == "conv" else 3
        if after is None:
            return graph, [{"pass": "deepen", "after": decision.name, "kernel": kernel,
                            "skipped": f"{decision.name}: no point after it keeps the function"}]
        return self.deepen_after(graph, after, kernel, rng, probes, calibration_batch)
