"""The DenseNet search space (PAPER.md, "DenseNet space"): growth rates widened, dense layers inserted.

The controller is the plain space's, unchanged; only the tokens and the passes differ.

Tokens (in graph order): each layer of a dense block (recognised by `easc.passes.dense.dense_blocks`) is a
conv token `conv-{growth}-{kernel}` named after its growth conv; every pooling node (the transitions' pools,
a stem pool, the final global pool) is a pool token, so blocks of tokens are the dense blocks; the last
linear layer is the output fc token, any hidden linear an fc token. Stem and transition convs make no token:
the space does not act on them.

Net2Wider on a dense layer: `dense_widen(layer, next growth)` (the growth list, 4..48 step 2 by default;
DenseNet-BC's bottleneck widens with it to 4 x growth); a hidden fc: `widen`, as in the plain space.
Net2Deeper (block, layer): `dense_deepen(after_layer=layer)`, a new dense layer of the same shape whose
output joins every later consumer with zero weights, its batchnorms calibrated on a batch of training
images; in an fc block, `deepen` as in the plain space. The sampled kernel is ignored (dense layers keep
their 3x3 conv; the space's kernel list is (3,), so the controller has nothing to choose there).

Every action runs in the plain space's `PassManager` (verifier + local numeric check); a pass that refuses
is recorded as skipped, as in `PlainSpace`. Defaults per network: 10 Net2Wider then 5 Net2Deeper actions (PAPER.md).

Stem and transitions (`widen_transitions`, on by default, as the released code's `widen_transition`): after a
network's actions, the stem conv is widened to 2 x the mean growth rate of its dense layers and each
transition conv, in graph order, to 0.5 x its input channels (which earlier widenings have grown). Both by
`widen` (Net2Wider through the concats that carry their channels), so the child stays function-preserving;
the released code sets these widths outright, which can also narrow a layer: here a layer already at least
that wide is left alone.
"""

from __future__ import annotations

from easc.ir import Graph
from easc.passes.base import PassError
from easc.passes.dense import LAYER_DESCRIPTION, dense_layers

from .encode import POOL_OPS
from .plain_space import PlainSpace
from .tokens import LayerToken, SearchSpace

GROWTH_RATES = tuple(range(4, 49, 2))
"""EAS's DenseNet space: growth rates 4..48 in steps of 2."""

SMALL_GROWTH_RATES = tuple(range(4, 17, 2))
"""Growth rates for small images (digits, 8x8): the same steps, capped at 16 so that a CPU search stays
in minutes (ten Net2Wider actions per network otherwise grow a tiny DenseNet a hundredfold)."""

SMALL_INPUT = 16  # images up to 16x16 (digits) use the small growth and fc lists


class DenseNetSpace(PlainSpace):
    """Encodes DenseNets as tokens and applies the controller's decisions with the dense passes."""

    name = "densenet"
    default_wider_actions = 10
    widen_transitions = True

    @classmethod
    def from_config(cls, config, input_shape) -> "DenseNetSpace":
        small = max(tuple(input_shape)[1:]) <= SMALL_INPUT
        fc = SearchSpace.small().fc_widths if small else SearchSpace.paper().fc_widths
        growth = SMALL_GROWTH_RATES if small else GROWTH_RATES
        space = cls(SearchSpace(conv_widths=tuple(config.growth_rates or growth),
                                fc_widths=tuple(config.fc_widths or fc), kernels=(3,),
                                max_layers_per_block=config.max_layers_per_block or None,  # 0: no limit
                                max_layers=config.max_layers or None),
                    widen_noise=config.widen_noise)
        space.widen_transitions = bool(getattr(config, "widen_transitions", True))
        return space

    def finish_episode(self, graph: Graph, rng, probes, records: list) -> Graph:
        """Widen the stem to 2 x mean growth and each transition to 0.5 x its input (see the module doc)."""
        if not self.widen_transitions:
            return graph
        dense = dense_layers(graph)
        if not dense:
            return graph
        skip = set(dense) | {layer.bottleneck for layer in dense.values() if layer.bottleneck}
        others = [n.name for n in graph.nodes if n.op == "conv2d" and n.name not in skip]
        mean_growth = sum(layer.growth for layer in dense.values()) / len(dense)
        manager = self.manager(graph, rng, probes)  # a refusal is recorded as skipped, as for any action
        noise = {"noise": self.widen_noise} if self.widen_noise else {}
        for i, name in enumerate(others):
            node = manager.graph.node(name)
            in_channels = int(node.weights["weight"].shape[1]) if "weight" in node.weights else 0
            target = int(round(2 * mean_growth)) if i == 0 else in_channels // 2
            if target <= node.width:
                continue
            records.append(manager.run("widen", layer=name, width=target, **noise).action())
        return manager.graph

    def tokens(self, graph: Graph) -> list:
        dense = dense_layers(graph)
        if not dense:
            raise PassError(f"the DenseNet space found no dense block in {graph.name} ({LAYER_DESCRIPTION}); "
                            f"use --space plain for other networks")
        linears = [n.name for n in graph.nodes if n.op == "linear"]
        outputs = set(graph.outputs.values())
        tokens = []
        for node in graph.nodes:
            if node.name in dense:
                tokens.append(LayerToken("conv", dense[node.name].growth, int(node.attrs["kernel"][0]), node.name))
            elif node.op in POOL_OPS:
                tokens.append(LayerToken("pool", 0, 0, node.name))
            elif node.op == "linear":
                is_out = node.name in outputs or node.name == linears[-1]
                tokens.append(LayerToken("fc", node.width, 0, node.name, is_output=is_out))
        return tokens

    def wider_pass(self, token, width) -> tuple:
        if token.kind == "conv":  # a dense layer: its growth (and its bottleneck with it)
            return "dense_widen", {"layer": token.name, "growth": width}
        return "widen", {"layer": token.name, "width": width}

    def apply_deeper(self, graph: Graph, decision, rng, probes, calibration_batch=None):
        """(new graph, action records) for a Net2Deeper decision."""
        if decision.kind == "conv":
            result = self.manager(graph, rng, probes).run("dense_deepen", after_layer=decision.name,
                                                          calibration=calibration_batch)
            return result.graph, [result.action()]
        return super().apply_deeper(graph, decision, rng, probes, calibration_batch)
