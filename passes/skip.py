"""Dense path (`--skip SRC:DST`): concatenate an earlier value onto a later layer's input, with zero weights.

DST (a conv2d or linear layer) computes y = W x + b on its input x (C channels). The pass feeds it
x' = concat(x, p) instead, where p is SRC's value (P channels) brought to x's size, and gives DST the weight

    W' = [W | 0]      (conv2d: O x (C + P) x kh x kw, linear: O x (C + P))

so W' x' = W x + 0 p: the function is unchanged by construction, and training can grow the new weights
(DenseNet-style connectivity, as in the EAS DenseNet space).

Bringing p to x's size:
- NCHW into a conv2d: equal spatial sizes need nothing; when SRC's size is an integer multiple (rh, rw) of x's,
  a pooling with kernel = stride = (rh, rw) goes on the path: average pooling by default (a linear map, so the
  path stays linear and gradients reach every position), max pooling on request. Other ratios are refused.
- NCHW into a linear layer (which reads NC): global average pooling then flatten (C channels -> C features).
- NC into a linear layer: nothing. NC into a conv2d is refused.

The path must run forward: SRC before DST in the graph order and not reachable from DST (that would be a
cycle). A grouped conv DST is refused: its new input channels would have to be split across the groups.
"""

from __future__ import annotations

import numpy as np

from easc.ir import LAYER_OPS, Graph, UnknownNodeError, make_node

from .base import PassError, PassResult, owned

POOLS = {"avg": "avgpool2d", "max": "maxpool2d"}


def _size(t) -> str:
    return f"{t.shape[2]}x{t.shape[3]}"


def _plan(graph: Graph, src: str, dst: str, pool: str) -> list:
    """Check the preconditions; return the path as [(name suffix, op, attrs, description)]."""
    if src not in graph:
        raise UnknownNodeError(graph, src)
    if dst not in graph:
        raise UnknownNodeError(graph, dst, kinds=LAYER_OPS)
    where = f"skip {src} -> {dst}"
    if src == dst:
        raise PassError(f"{where}: a path from a node to itself is not a skip connection (choose a later DST)")
    d = graph.node(dst)
    if d.op not in LAYER_OPS:
        layers = ", ".join(n.name for n in graph.layers()[:10])
        raise PassError(f"{where}: {dst} is a {d.op}; a dense path must end at a conv2d or linear layer "
                        f"(layers: {layers})")
    if d.op == "conv2d" and d.attrs["groups"] != 1:
        raise PassError(f"{where}: {dst} is a grouped conv (groups={d.attrs['groups']}); the new input channels "
                        f"would have to be split across its groups")
    if pool not in POOLS:
        raise PassError(f"{where}: pool {pool!r} is not one of {', '.join(POOLS)}")
    if graph.reaches(dst, src):
        raise PassError(f"{where}: {dst} already reaches {src}, so a path from {src} into {dst} would make a cycle")
    if graph.position(src) > graph.position(dst):
        raise PassError(f"{where}: {src} comes after {dst} in the graph order; a path must run from an earlier "
                        f"node into a later layer")
    s, x = graph.node(src).type, graph.node(d.inputs[0]).type
    if s.rank not in (2, 4):
        raise PassError(f"{where}: {src}'s value {s} is neither NCHW nor NC")
    if x.rank == 4:
        if s.rank != 4:
            raise PassError(f"{where}: {src}'s value {s} has no spatial axes but {dst} reads an NCHW value {x}")
        (hs, ws), (hx, wx) = s.shape[2:], x.shape[2:]
        if (hs, ws) == (hx, wx):
            return []
        if hs % hx or ws % wx:
            raise PassError(f"{where}: {src}'s spatial size {_size(s)} is not an integer multiple of the "
                            f"{_size(x)} that {dst} reads, so no pooling with kernel = stride maps one onto "
                            f"the other")
        kernel = (hs // hx, ws // wx)
        why = "linear, keeps the path linear" if pool == "avg" else "as requested"
        return [("pool", POOLS[pool], dict(kernel=kernel, stride=kernel),
                 f"{pool} pooling {kernel[0]}x{kernel[1]}, stride {kernel[0]}x{kernel[1]} "
                 f"({_size(s)} -> {_size(x)}; {why})")]
    if s.rank == 4:
        return [("pool", "global_avgpool", {}, f"global average pooling ({_size(s)} -> 1x1)"),
                ("flatten", "flatten", {}, f"flatten ({s.channels} channels -> {s.channels} features)")]
    return []


def skip(graph: Graph, src: str, dst: str, *, pool: str = "avg", rng: np.random.Generator | None = None) -> PassResult:
    """Concatenate `src`'s value onto the input of layer `dst`, with zero weights for it (see module doc).

    pool: "avg" (default) or "max", the pooling used when `src`'s spatial size is a multiple of `dst`'s input.
    rng:  unused (zero weights need no randomness); taken so every pass has the same signature.
    """
    del rng
    steps = _plan(graph, src, dst, pool)
    d = graph.node(dst)
    x_name = d.inputs[0]
    stem = f"skip_{src}_{dst}"
    names = graph.namespace()
    path, changes = [], []
    prev = graph.node(src)
    for suffix, op, attrs, what in steps:
        name = names.fresh(f"{stem}_{suffix}")
        node = make_node(name, op, [prev.name], [prev.type], attrs, {}, origin=src)
        changes.append(f"{name}: {what}")
        path.append(node)
        prev = node
    x = graph.node(x_name)
    concat_name = names.fresh(f"{stem}_concat")
    concat = make_node(concat_name, "concat", [x_name, prev.name], [x.type, prev.type], {}, {}, origin=dst)
    c, p = x.type.channels, prev.type.channels
    changes.append(f"{concat_name}: concat({x_name}, {prev.name}), {c} + {p} = {c + p} channels")

    w = d.weights["weight"]
    extra = np.zeros((w.shape[0], p) + w.shape[2:], np.float32)
    weights = dict(d.weights, weight=owned(np.concatenate([w, extra], axis=1)))
    new_dst = d.replace(inputs=(concat_name,), weights=weights)
    changes.append(f"{dst}: reads {concat_name}, input {c} -> {c + p} channels, zero weights for the {p} new ones")

    nodes = []
    for n in graph.nodes:
        if n.name == dst:
            nodes.extend(path + [concat, new_dst])
        else:
            nodes.append(n)
    record = {"pass": "skip", "src": src, "dst": dst, "pool": pool}
    return PassResult(graph.replace(nodes=nodes), changes, record,
                      rewritten=frozenset([*(n.name for n in path), concat_name, dst]))


def skip_candidates(graph: Graph, pool: str = "avg") -> list:
    """Every (src, dst) pair `skip` accepts, in graph order, leaving out a dst's own direct input."""
    pairs = []
    for d in graph.layers():
        for n in graph.nodes[:graph.position(d.name)]:
            if n.name == d.inputs[0]:
                continue
            try:
                _plan(graph, n.name, d.name, pool)
            except PassError:
                continue
            pairs.append((n.name, d.name))
    return pairs
