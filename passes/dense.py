"""Dense blocks: recognise them in any graph, widen a layer's growth, insert a new layer, all exactly.

Recognition (`dense_blocks`), an analysis over ordinary IR, so a DenseNet imported from ONNX or PyTorch is
recognised like one built here. A *dense layer* is the chain

    V -> batchnorm -> relu [-> conv 1x1 -> batchnorm -> relu] -> conv G [-> dropout] = O

where every node after V is read only by the next one, G keeps V's spatial size, and O is read only by
concats. G names the layer; its output channels are the layer's growth k; the optional 1x1 conv is the
DenseNet-BC bottleneck. Write leaves(v) for a value seen through concats: leaves(concat(a, b)) =
leaves(a) + leaves(b), leaves(v) = (v,) otherwise. Layer d *follows* layer c when

    leaves(V_d) = leaves(V_c) + (O_c,)

i.e. d reads everything c read plus c's output. A block is a maximal chain of layers under "follows" whose
last layer's output also ends up in a concat with leaves(V_last) + (O_last,) (the block output, read by the
transition or the classifier head). This holds whether the running map is written as nested concats,
concat(concat(x, l1), l2) (easc's start nets), or as one concat of all earlier outputs per layer (the
torchvision DenseNet, `torch.cat(features, 1)`), or any mix of the two.

dense_widen (growth k -> k'): the layer's output channels travel through every concat that holds them, the
pre-activation batchnorms of every later layer of the block and of the transition, into those layers' first
convs. This is exactly the channel flow `passes.widen.widen` follows (`channels.trace_channels`: a concat
carries the channels as a segment at an offset, a batchnorm's parameters are gathered by g, each consumer
conv's input columns are gathered and divided by copy counts), so the pass is `widen(G, k')` and, with
`bottleneck=True`, `widen(bottleneck, 4 k')` when the bottleneck is narrower than that (DenseNet-BC's 4 x
growth; its output only reaches G's batchnorm and G). Both are Net2Wider, exact without noise.

dense_deepen (a new layer N after layer j of a block): N copies layer j's shape (bottleneck width, growth,
kernels, padding, bias, eps, dropout), reads the running map after layer j (leaves P = leaves(V_j) + (O_j,)),
and its output joins every concat after layer j:

- nested form (O_j is read by one concat V*, as its last input): N reads V*, a new concat(V*, N) follows
  it, and every other reader of V* reads that concat instead;
- otherwise (a concat per layer): N reads a new concat of P, and every concat that reads O_j gets N's
  output right after O_j.

Either way every value that held O_j's channels, apart from N's own input, now holds N's k channels right
after them, and nothing else changes. Those channels are followed forward (`trace_channels` on the rewired
graph) to every consumer conv / linear, whose weights get *zero* input columns there:

    W' = W with zero columns inserted at N's channels   =>   W' [x; n] = W x       (exact for any n)

and to every batchnorm on the way, which gets parameters for them. The pass refuses when the new channels
would reach a graph output (its shape would change) or an op that cannot take extra channels, such as a
residual add whose other input does not carry them. N itself is initialised to learn: convs He-normal
(`easc.ir.init_weights`), batchnorms neutral (mean 0, var 1, scale 1, bias 0), and the later batchnorms on
N's channels likewise. With a calibration batch each of those batchnorms instead gets running mean / var
measured at its input on the batch (its first CALIBRATION_LIMIT samples; scale 1, bias 0), so N's first
training steps see normalised activations; the function is exact either way, because the consumers' new weights are 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from easc.ir import Graph, Node, make_node, run_all
from easc.ir.interpret import eval_node
from easc.ir.ops import ShapeError, infer_type

from .base import PassError, PassResult, default_rng, owned
from .channels import ChannelFlowError, trace_channels
from .widen import widen

BOTTLENECK_FACTOR = 4
"""DenseNet-BC: a bottleneck of 4 x growth channels in front of each 3x3 conv."""

CALIBRATION_LIMIT = 32
"""Samples of a calibration batch that dense_deepen measures on. Per-channel statistics over 32 images and
all their spatial positions are within a few percent of the batch's, and they only set where training of
the new channels starts (the function is exact regardless); the forward pass costs what the batch costs."""

LAYER_DESCRIPTION = ("a dense layer is batchnorm -> relu [-> conv 1x1 -> batchnorm -> relu] -> conv whose "
                     "output is concatenated onto its input")


@dataclass(frozen=True)
class DenseLayer:
    """One layer of a dense block.

    name:       its growth conv (the node `--widen` / `--deepen` name)
    block:      index of its block (1-based, graph order); position: its place in the block (1-based)
    input:      the value it reads (the running feature map); output: the value the concats read
    bottleneck: its 1x1 conv, or None
    nodes:      its own nodes, first batchnorm to output, in graph order
    growth:     output channels of the growth conv
    """

    name: str
    block: int
    position: int
    input: str
    output: str
    bottleneck: str | None
    nodes: tuple
    growth: int


@dataclass(frozen=True)
class DenseBlock:
    """A dense block: its layers in order, the values it starts from, and the value holding all of it.

    base:   leaves of the first layer's input (the block input, usually one value)
    output: the concat holding base + every layer's output, read after the block (transition / head)
    """

    index: int
    layers: tuple
    base: tuple
    output: str

    @property
    def name(self) -> str:
        return f"block{self.index}"

    @property
    def growths(self) -> tuple:
        return tuple(layer.growth for layer in self.layers)


def _leaves(graph: Graph) -> dict:
    table = {}
    for n in graph.nodes:
        table[n.name] = sum((table[i] for i in n.inputs), ()) if n.op == "concat" else (n.name,)
    return table


def _only_reader(graph: Graph, value: str, reader: str) -> bool:
    return graph.consumers(value) == [reader] and not graph.output_names_of(value)


def _match_layer(graph: Graph, conv: Node) -> dict | None:
    """The dense-layer chain ending at `conv` (see the module doc), or None."""
    if conv.op != "conv2d" or conv.attrs["groups"] != 1 or conv.type.rank != 4:
        return None
    relu = graph.node(conv.inputs[0])
    if relu.op != "relu" or not _only_reader(graph, relu.name, conv.name):
        return None
    bn = graph.node(relu.inputs[0])
    if bn.op != "batchnorm" or not _only_reader(graph, bn.name, relu.name):
        return None
    nodes = [bn.name, relu.name, conv.name]
    x = graph.node(bn.inputs[0])
    bottleneck = None
    if (x.op == "conv2d" and x.attrs["kernel"] == (1, 1) and x.attrs["stride"] == (1, 1)
            and x.attrs["groups"] == 1 and _only_reader(graph, x.name, bn.name)):
        r1 = graph.node(x.inputs[0])
        b1 = graph.node(r1.inputs[0]) if r1.op == "relu" else None
        if not (b1 is not None and b1.op == "batchnorm" and _only_reader(graph, r1.name, x.name)
                and _only_reader(graph, b1.name, r1.name)):
            return None
        bottleneck, nodes = x.name, [b1.name, r1.name, x.name] + nodes
        x = graph.node(b1.inputs[0])
    if x.type.rank != 4 or x.type.shape[2:] != conv.type.shape[2:]:
        return None
    output = conv.name
    readers = graph.consumers(conv.name)
    if len(readers) == 1 and graph.node(readers[0]).op == "dropout" and not graph.output_names_of(conv.name):
        output = readers[0]
        nodes.append(output)
        readers = graph.consumers(output)
    if not readers or graph.output_names_of(output) or any(graph.node(r).op != "concat" for r in readers):
        return None
    return dict(name=conv.name, input=x.name, output=output, bottleneck=bottleneck, nodes=tuple(nodes),
                growth=conv.width)


def dense_blocks(graph: Graph) -> list:
    """The dense blocks of `graph`, in graph order (see the module doc for what is recognised)."""
    leaves = _leaves(graph)
    candidates = [m for m in (_match_layer(graph, n) for n in graph.layers()) if m is not None]
    by_input: dict = {}
    for c in candidates:
        by_input.setdefault(leaves[c["input"]], []).append(c)

    def successor(c):
        after = by_input.get(leaves[c["input"]] + (c["output"],), [])
        return after[0] if len(after) == 1 else None

    followers = {id(s) for s in map(successor, candidates) if s is not None}
    concats = [n.name for n in graph.nodes if n.op == "concat"]
    blocks = []
    for first in candidates:
        if id(first) in followers:
            continue
        chain, c = [first], successor(first)
        while c is not None and all(c is not d for d in chain):
            chain.append(c)
            c = successor(c)
        full = leaves[chain[-1]["input"]] + (chain[-1]["output"],)
        outputs = [v for v in concats if leaves[v] == full]
        if not outputs:
            continue
        index = len(blocks) + 1
        layers = tuple(DenseLayer(block=index, position=k, **c) for k, c in enumerate(chain, 1))
        blocks.append(DenseBlock(index, layers, leaves[first["input"]], outputs[-1]))
    return blocks


def dense_layers(graph: Graph) -> dict:
    """Every dense layer of `graph` by name, in graph order."""
    return {layer.name: layer for block in dense_blocks(graph) for layer in block.layers}


def _find(graph: Graph, layer: str, what: str) -> tuple:
    for block in dense_blocks(graph):
        for dl in block.layers:
            if dl.name == layer:
                return block, dl
    names = list(dense_layers(graph))
    if not names:
        raise PassError(f"{what} {layer}: the graph has no dense block ({LAYER_DESCRIPTION})")
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    why = f"{layer} is a {graph.node(layer).op}" if layer in graph else f"there is no node named {layer!r}"
    raise PassError(f"{what} {layer}: not a layer of a dense block ({why}; dense layers: {shown})")


# -- dense_widen ----------------------------------------------------------------------------------
def dense_widen(graph: Graph, layer: str, growth: int, *, rng: np.random.Generator | None = None,
                bottleneck: bool = True, noise: float = 0.0) -> PassResult:
    """Widen dense layer `layer`'s growth to `growth` (and its bottleneck to 4 x growth); see the module doc."""
    _, dl = _find(graph, layer, "dense_widen")
    if isinstance(growth, bool) or int(growth) != growth:
        raise PassError(f"dense_widen {layer}: growth must be a whole number, got {growth!r}")
    growth = int(growth)
    if growth <= dl.growth:
        raise PassError(f"dense_widen {layer}: growth {growth} is not larger than its current growth {dl.growth}; "
                        f"widening only adds channels")
    rng = default_rng(rng)
    results = [widen(graph, layer, growth, rng=rng, noise=noise)]
    record = {"pass": "dense_widen", "layer": layer, "growth": growth}
    notes = []
    if bottleneck and dl.bottleneck is not None:
        target = BOTTLENECK_FACTOR * growth
        current = graph.node(dl.bottleneck).width
        if current < target:
            results.append(widen(results[0].graph, dl.bottleneck, target, rng=rng, noise=noise))
            record["bottleneck"] = target
        else:
            notes.append(f"{dl.bottleneck}: kept at {current} channels (already >= {BOTTLENECK_FACTOR} x {growth})")
    changes = [line for r in results for line in r.changes] + notes
    result = PassResult(results[-1].graph, changes, record,
                        rewritten=frozenset().union(*(r.rewritten for r in results)))
    if noise > 0:
        record["noise"] = float(noise)
        result.exact = False
        result.tolerance = sum(r.tolerance for r in results)
    return result


# -- dense_deepen ---------------------------------------------------------------------------------
def _stem_name(graph: Graph, base: str, suffixes) -> str:
    """`base` (or `base_2`, ...) such that `base + s` is free for every suffix (`easc.ir.names`)."""
    return graph.namespace().fresh_stem(base, suffixes)


def _new_layer(graph: Graph, dl: DenseLayer, stem: str, source: str, source_type, rng) -> list:
    """Nodes of a layer shaped like `dl`, reading `source`, fresh weights (He convs, neutral batchnorms)."""
    old = {n: graph.node(n) for n in dl.nodes}
    nodes, prev, prev_type = [], source, source_type
    names = {}
    if dl.bottleneck:
        names[dl.nodes[0]], names[dl.nodes[1]], names[dl.bottleneck] = (
            f"{stem}_bottleneck_bn", f"{stem}_bottleneck_relu", f"{stem}_bottleneck")
        rest = dl.nodes[3:]
    else:
        rest = dl.nodes
    names[rest[0]], names[rest[1]], names[rest[2]] = f"{stem}_bn", f"{stem}_relu", stem
    if len(rest) > 3:
        names[rest[3]] = f"{stem}_dropout"
    for name in dl.nodes:
        node = old[name]
        attrs = dict(node.attrs)
        node = make_node(names[name], node.op, [prev], [prev_type], attrs, None, rng, origin=dl.name)
        nodes.append(node)
        prev, prev_type = node.name, node.type
    return nodes


def _insert_columns(w: np.ndarray, mask: np.ndarray, axis: int, fill) -> np.ndarray:
    """`w` with its `axis` grown to len(mask): old entries where mask is False, `fill` where it is True."""
    shape = list(w.shape)
    shape[axis] = len(mask)
    out = np.empty(shape, np.float32)  # the old entries copied as they are, `fill` (0 or 1) exact in float32
    index = [slice(None)] * len(shape)
    index[axis] = ~mask
    out[tuple(index)] = w
    index[axis] = mask
    out[tuple(index)] = fill
    return owned(out)


def _channel_mask(flow, value: str, channels: int) -> np.ndarray:
    mask = np.zeros(channels, bool)
    for seg in flow.segments[value]:
        mask[seg.start:seg.end(flow.width)] = True
    return mask


def _feeds(graph: Graph, batch, after: str) -> dict:
    if isinstance(batch, dict):
        return batch
    inputs = [n.name for n in graph.inputs]
    if len(inputs) != 1:
        raise PassError(f"dense_deepen {after}: the graph has {len(inputs)} inputs ({', '.join(inputs)}); "
                        f"give the calibration batch as a dict {{input name: array}}")
    return {inputs[0]: batch}


def _stats(x: np.ndarray) -> tuple:
    """Per-channel (mean, population variance) over the batch and, for NCHW, the spatial positions."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    return x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)


def _calibrated(bn: Node, mean, var, mask=None) -> Node:
    weights = {k: np.array(w, np.float64) for k, w in bn.weights.items()}
    sel = slice(None) if mask is None else mask
    weights["mean"][sel], weights["var"][sel] = mean, var
    weights["scale"][sel], weights["bias"][sel] = 1.0, 0.0
    return bn.replace(weights=weights)


def _replace_node(graph: Graph, node: Node) -> Graph:
    return graph.replace(nodes=[node if n.name == node.name else n for n in graph.nodes])


def _calibrate(graph: Graph, feeds: dict, source: str, layer: list, flow) -> Graph:
    """Measure the new layer's batchnorms, and the new channels of every later one, on the batch.

    One forward pass of the network up to `source` (the new layer's input) on at most CALIBRATION_LIMIT
    samples; then the new layer node by node, each batchnorm measured on what reaches it; then N's channels
    alone along the channel flow: they meet no other channel before a conv / linear consumer, so the slice
    of each value that holds them follows from the slice before it, at the cost of a k-channel network.
    Copies of N's channels (a concat reading them twice) are identical, so the first copy stands for all.
    """
    feeds = {k: np.asarray(v)[:CALIBRATION_LIMIT] for k, v in feeds.items()}
    upto = graph.position(source) + 1
    # float32, like `deepen.calibration_stats`: statistics, summed in float64 by `_stats`
    x = run_all(Graph(graph.nodes[:upto], {source: source}, graph.name), feeds, dtype=np.float32)[source]
    new = {}
    for name in (n.name for n in layer):
        node = graph.node(name)
        if node.op == "batchnorm":
            node = _calibrated(node, *_stats(x))
            graph = _replace_node(graph, node)
        x = new[name] = eval_node(node, [x])
    for value in flow.segments:  # graph order
        if value in new:
            continue
        node = graph.node(value)
        args = [new[i] for i in node.inputs if i in new]
        if node.op == "concat":
            new[value] = args[0]
        elif node.op == "add":
            new[value] = sum(args)
        elif node.op == "flatten":
            new[value] = args[0].reshape(len(args[0]), -1)
        elif node.op == "batchnorm":
            mask = _channel_mask(flow, value, node.type.channels)
            copies = len(flow.segments[value])
            node = _calibrated(node, *(np.tile(a, copies) for a in _stats(args[0])), mask)
            graph = _replace_node(graph, node)
            first = np.flatnonzero(mask)[:args[0].shape[1]]
            new[value] = eval_node(node.replace(weights={k: w[first] for k, w in node.weights.items()}), args[:1])
        else:  # relu, pooling, dropout: channel by channel
            new[value] = eval_node(node, args[:1])
    return graph


def _extend_readers(rewired: Graph, flow) -> tuple:
    """Zero input weights in every consumer, and neutral batchnorm parameters, for the new channels.

    Returns (graph, names of the batchnorms that grew, change lines).
    """
    nodes, grown, changes = [], [], []
    neutral = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}
    for node in rewired.nodes:
        if node.name in flow.consumers:
            mask = _channel_mask(flow, node.inputs[0], rewired.node(node.inputs[0]).type.channels)
            weight = _insert_columns(node.weights["weight"], mask, 1, 0.0)
            node = node.replace(weights=dict(node.weights, weight=weight))
            changes.append(f"{node.name}: zero input weights for the {int(mask.sum())} new "
                           f"{'channels' if node.op == 'conv2d' else 'columns'} "
                           f"({weight.shape[1] - int(mask.sum())} -> {weight.shape[1]})")
        elif node.op == "batchnorm" and node.name in flow.segments:
            mask = _channel_mask(flow, node.name, node.type.channels)
            node = node.replace(weights={key: _insert_columns(w, mask, 0, neutral[key])
                                         for key, w in node.weights.items()})
            grown.append(node.name)
        nodes.append(node)
    return rewired.replace(nodes=nodes), grown, changes


def dense_deepen(graph: Graph, after_layer: str, *, rng: np.random.Generator | None = None,
                 calibration=None) -> PassResult:
    """Insert a new dense layer right after `after_layer` in its block, keeping the function (module doc).

    rng:         draws the new layer's He-normal conv weights.
    calibration: optional batch of training inputs (an array for a one-input graph, else {input: array});
                 the new batchnorms' running statistics are measured on it (else mean 0, var 1), on at
                 most CALIBRATION_LIMIT of its samples.
    """
    block, dl = _find(graph, after_layer, "dense_deepen")
    rng = default_rng(rng)
    where = f"dense_deepen {after_layer}"
    later = block.layers[dl.position] if dl.position < len(block.layers) else None
    v_star = later.input if later is not None else block.output
    readers = graph.consumers(dl.output)
    nested = readers == [v_star] and graph.node(v_star).inputs[-1] == dl.output \
        and graph.node(v_star).inputs.count(dl.output) == 1

    suffixes = ["", "_bn", "_relu", "_bottleneck", "_bottleneck_bn", "_bottleneck_relu", "_dropout", "_concat",
                "_input"]
    # deepening after an inserted layer numbers on (deepen_block1_layer3_2), not deepen_deepen_...
    base = re.sub(r"_\d+$", "", after_layer) if after_layer.startswith("deepen_") else f"deepen_{after_layer}"
    stem = _stem_name(graph, base, suffixes)
    leaves = _leaves(graph)
    changes = []
    types = {}
    new_nodes: list = []

    if nested:
        exposed = graph.output_names_of(v_star)
        if exposed:  # the output would have to take the new channels (changing its shape) or never see them
            raise PassError(f"{where}: the running map after it, {v_star}, is the graph output {exposed[0]!r}; a new "
                            f"layer's channels would change the output's shape")
        anchor, source = v_star, v_star
        pre: list = []
    else:
        # every leaf of P precedes the layer's input, hence its output: right after the output, P is complete,
        # and every concat that reads the output (and will read the new layer's) still comes later
        parts = leaves[dl.input] + (dl.output,)
        anchor = dl.output
        source = f"{stem}_input"
        pre = [make_node(source, "concat", list(parts), [graph.node(p).type for p in parts], {}, {},
                         origin=after_layer)]
        changes.append(f"{source}: concat of the block input and layers 1..{dl.position} "
                       f"({pre[0].type.channels} channels), the new layer's input")
    layer_nodes = _new_layer(graph, dl, stem, source, graph.node(source).type if nested else pre[0].type, rng)
    out = layer_nodes[-1].name
    inserted = pre + layer_nodes
    joined = f"{stem}_concat"
    if nested:
        inserted.append(make_node(joined, "concat", [v_star, out], [graph.node(v_star).type, layer_nodes[-1].type],
                                  {}, {}, origin=after_layer))

    for node in graph.nodes:
        inputs = node.inputs
        if nested and v_star in inputs:
            inputs = tuple(joined if i == v_star else i for i in inputs)
        elif not nested and node.op == "concat" and dl.output in inputs:
            inputs = tuple(x for i in inputs for x in ((i, out) if i == dl.output else (i,)))
        if node.op != "input":
            try:
                new_type = infer_type(node.op, [types[i] for i in inputs], dict(node.attrs))
            except ShapeError as e:
                raise PassError(f"{where}: the new layer's channels would reach {node.name} ({node.op}), whose "
                                f"inputs then no longer fit ({e}); only concats, channel-wise ops and the convs "
                                f"or linear layers after them can take new channels") from None
            if inputs != node.inputs or new_type != node.type:
                node = node.replace(inputs=inputs, type=new_type)
        new_nodes.append(node)
        types[node.name] = node.type
        if node.name == anchor:
            for n in inserted:
                new_nodes.append(n)
                types[n.name] = n.type
    rewired = graph.replace(nodes=new_nodes)

    try:
        flow = trace_channels(rewired, stem, rearrange=False)
    except ChannelFlowError as e:
        raise PassError(f"{where}: the new layer's output cannot join the block: {e}") from None

    k = dl.growth
    result_graph, grown_bns, extended = _extend_readers(rewired, flow)
    changes += extended

    new_bns = [n.name for n in layer_nodes if n.op == "batchnorm"]
    if calibration is not None:
        result_graph = _calibrate(result_graph, _feeds(graph, calibration, after_layer), source, layer_nodes, flow)
        how = "running mean / var measured on the calibration batch, scale 1, bias 0"
    else:
        how = "neutral (mean 0, var 1, scale 1, bias 0)"

    bottleneck = f", bottleneck {graph.node(dl.bottleneck).width}" if dl.bottleneck else ""
    head = (f"{stem}: new dense layer after {after_layer} in {block.name} (growth {k}{bottleneck}, He-normal "
            f"convs), reads {source}")
    joins = (f"{joined}: concat({v_star}, {out}); {', '.join(r for r in graph.consumers(v_star))} now read it"
             if nested else f"{out} joins every concat that read {dl.output}, right after it")
    changes = [head, joins] + changes
    changes.append(f"batchnorms {', '.join(new_bns + grown_bns)} on the new channels: {how}")
    record = {"pass": "dense_deepen", "after": after_layer, "layer": stem, "growth": k,
              "calibrated": calibration is not None}
    # every node not shared with the input graph: inserted, rewired, grown or calibrated
    rewritten = frozenset(n.name for n in result_graph.nodes if graph._index.get(n.name) is not n)
    return PassResult(result_graph, changes, record, rewritten=rewritten)
