"""`--max-params`: mark the layer tokens whose widening or deepening could take a network past the cap.

The controller samples from masks over tokens (`tokens.widen_mask`, `tokens.deepen_points`); a token marked
`can_widen=False` / `can_deepen=False` is never offered. The marks come from an *upper* estimate of the
parameters an action adds, so a masked action could not have fitted, and an action offered may still not fit
once combined with others of the same Net2Wider decision: the search checks the child's exact count after
each action and skips one that exceeds the cap (recorded as skipped). The estimates, for a layer of n units
(conv kernel k x k, C inputs) going to m units:

    Net2Wider   (m / n - 1) x (params of the layer and its batchnorm + params of every conv / linear layer
                reached from its output through non-weighted ops)
                Exact for a conv feeding a conv (the consumer's input columns grow by m / n), an upper bound
                where the channels reach a consumer through a concat (only a slice of its input grows).
    Net2Deeper  a new layer of the same width after it: n x n x K^2 + n + 4 n (conv, K the largest kernel of
                the space, bias and batchnorm) or n x n + n + 4 n (fc); a dense layer: twice the dense layer
                it follows (its own new layer plus the new input columns of the block's later layers, bounded
                by the same again).
"""

from __future__ import annotations

import dataclasses

from easc.ir import Graph

from .tokens import SearchSpace, next_width

WEIGHTED = ("conv2d", "linear")


def _reached_layers(graph: Graph, start: str) -> list:
    """conv / linear nodes fed by `start` through non-weighted nodes (batchnorm, relu, pool, concat, ...)."""
    seen, todo, found = {start}, list(graph.consumers(start)), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        if node.op in WEIGHTED:
            found.append(node)
        else:
            todo.extend(graph.consumers(name))
    return found


def _unit_params(graph: Graph, layer: str) -> int:
    """The layer's parameters plus those of the batchnorms right after it."""
    total = graph.node(layer).params
    current = layer
    while True:
        consumers = graph.consumers(current)
        if len(consumers) != 1 or graph.node(consumers[0]).op in WEIGHTED:
            return total
        current = consumers[0]
        node = graph.node(current)
        if node.op != "batchnorm" and node.op != "relu":
            return total
        total += node.params


def widen_cost(graph: Graph, token, space: SearchSpace) -> int:
    m = next_width(token, space)
    if m is None:
        return 0
    n = token.width
    around = _unit_params(graph, token.name) + sum(c.params for c in _reached_layers(graph, token.name))
    return int(around * (m / n - 1)) + 1


def deepen_cost(graph: Graph, token, space: SearchSpace, dense: dict | None = None) -> int:
    n = token.width
    if token.kind == "fc":
        return n * n + 5 * n
    layer = (dense or {}).get(token.name)
    if layer is not None:
        return 2 * sum(graph.node(name).params for name in layer.nodes)
    return n * n * max(space.kernels) ** 2 + 5 * n


def limit_tokens(graph: Graph, tokens: list, space: SearchSpace, max_params: int) -> list:
    """`tokens` with `can_widen` / `can_deepen` cleared where the action's estimate would pass `max_params`."""
    from easc.passes.dense import dense_layers

    budget = max_params - graph.params
    dense = dense_layers(graph)
    out = []
    for t in tokens:
        if t.kind == "pool":
            out.append(t)
            continue
        # Only ever cleared: a space may have masked the token already (graph_space: a coupled layer).
        out.append(dataclasses.replace(t, can_widen=t.can_widen and widen_cost(graph, t, space) <= budget,
                                       can_deepen=t.can_deepen and deepen_cost(graph, t, space, dense) <= budget))
    return out
