"""The plain-CNN search space: how the controller's decisions become verified IR passes.

Net2Wider decision on token i: `widen(graph, token.name, next_width(token))`, for every token the
decision marks. Net2Deeper decision (block, layer, kernel): `deepen(graph, unit_end(layer), kernel)`,
with the new batchnorm calibrated on a batch of training images (EAS: running mean/var and beta set
to the measured mean/var, gamma to sqrt(var + eps), so it is the identity in eval mode and close to
it in train mode); the statistics come from `calibration.CalibrationStats` (measured once per parent,
carried through each child's passes). Every pass runs in a `PassManager` (verifier + local numeric check; a refusal skips the
action), so each child is verified to compute its parent's function before it is trained.
"""

from __future__ import annotations

import numpy as np

from easc.ir import Graph
from easc.passes.manager import PassManager

from .calibration import CalibrationStats
from .encode import graph_tokens, unit_end
from .tokens import SearchSpace, next_width

SMALL_INPUT = 16  # images up to 16x16 (digits) use the small width lists


def default_space(input_shape, config) -> SearchSpace:
    small = max(input_shape[1:]) <= SMALL_INPUT
    base = SearchSpace.small() if small else SearchSpace.paper()
    return SearchSpace(conv_widths=tuple(config.conv_widths or base.conv_widths),
                       fc_widths=tuple(config.fc_widths or base.fc_widths),
                       kernels=tuple(config.kernels or base.kernels))


class PlainSpace:
    """Encodes graphs as tokens and applies decisions with the IR's passes."""

    name = "plain"
    default_wider_actions = 4

    def __init__(self, space: SearchSpace, widen_noise: float = 0.0):
        self.space = space
        # Noise on the new copies' outgoing weights (PAPER.md: about 1% of the weights' std). Without it
        # a copied unit keeps exactly its original's weights and gradients through all later training,
        # so widening would add parameters but no capacity. The price: the child is preserved only
        # approximately, within the tolerance `widen` states for that noise, which the check enforces.
        self.widen_noise = widen_noise
        self.calibration = CalibrationStats()

    def tokens(self, graph: Graph) -> list:
        return graph_tokens(graph)

    def wider_pass(self, token, width) -> tuple:
        """(pass name, its arguments) that take `token`'s layer to `width` (subclasses pick other passes)."""
        return "widen", {"layer": token.name, "width": width}

    def manager(self, graph: Graph, rng, probes):
        """The pass manager an action runs in: the chain's generator and probe set (which keeps the current
        graph's activations, so each action's check evaluates only its region), refusals skipped."""
        return PassManager(graph, rng=rng, probes=probes, on_refusal="skip")

    def start_chain(self, parent: Graph, calibration_batch=None) -> None:
        """Before a child's first action: the parent's calibration statistics, measured once per parent."""
        self.calibration.measure_parent(parent, calibration_batch)

    def apply_wider(self, graph: Graph, decision, rng, probes, calibration_batch=None):
        """(new graph, action records) for a Net2Wider decision."""
        manager = self.manager(graph, rng, probes)
        records = []
        by_name = {t.name: t for t in decision.tokens}
        for name in decision.names:
            token = by_name[name]
            width = next_width(token, self.space)
            if width is None or manager.graph.node(name).width >= width:
                continue
            pass_name, kwargs = self.wider_pass(token, width)
            noise = {"noise": self.widen_noise} if self.widen_noise else {}  # records name noise only when used
            before = manager.graph
            result = manager.run(pass_name, **kwargs, **noise)
            self.calibration.transport(before, result)
            records.append(result.action())
        return manager.graph, records

    def apply_deeper(self, graph: Graph, decision, rng, probes, calibration_batch=None):
        """(new graph, action records): Net2Deeper after the chosen layer's unit (conv/linear-bn-relu)."""
        kernel = decision.kernel if decision.kind == "conv" else 3
        return self.deepen_after(graph, unit_end(graph, decision.name), kernel, rng, probes, calibration_batch)

    def deepen_after(self, graph: Graph, after: str, kernel: int, rng, probes, calibration_batch=None):
        """(new graph, action records): one verified deepen after value `after`, its new batchnorm calibrated
        with the parent's statistics carried through the chain (measured once per parent)."""
        calibration = None
        if calibration_batch is not None:
            calibration = self.calibration.stats(graph, after, calibration_batch)
        result = self.manager(graph, rng, probes).run("deepen", after=after, kernel=kernel, calibration=calibration)
        self.calibration.transport(graph, result)
        return result.graph, [result.action()]


def widths_of(graph: Graph) -> list:
    return [n.width for n in graph.layers()]


def child_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The passes' generator for child `index` of `step`: derived, not carried, so resume repeats it."""
    return np.random.default_rng([seed, step, index])
