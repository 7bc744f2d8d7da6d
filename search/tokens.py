"""Layer tokens: the controller's view of a network, and a token-level simulator of the two actions.

The meta-controller (see ``controller.py`` and PAPER.md, "Meta-controller") never sees the IR. The search
lowers a graph to a list of :class:`LayerToken` (one per conv / fc layer, one per pooling layer) and maps the
controller's choices back to IR nodes through ``LayerToken.name``. This module imports neither the IR nor
torch, so the controller can be tested, and its synthetic rewards computed, without building networks.

Blocks
    Pooling layers delimit blocks; the fc stack is always the last block, even when no pooling layer separates
    it from the last conv (a global average pool usually does, but a Flatten alone does not make a token).
    ``blocks(tokens)`` lists, per block, the indices of its conv / fc tokens; empty blocks (two pools in a
    row) are dropped so that block indices always name something that exists.

Net2Wider on tokens
    A layer of width n goes to ``next_width``: the smallest value of the space's width list strictly larger
    than n (the paper's "next value of a width list"). Pooling layers, the output layer and layers already at
    the list's maximum cannot be widened.

Net2Deeper on tokens
    A new layer of the same width is inserted right after the chosen layer: a conv with the chosen kernel
    after a conv, an fc after an fc (the IR pass initialises it to the identity). The classifier is never a
    deepening point: an identity layer followed by ReLU after the logits is not function-preserving (logits
    can be negative), so ``deepen_points`` leaves it out.

Limits (the released EAS code's, see PAPER.md)
    ``SearchSpace.max_layers_per_block`` (10 in the plain space) masks every deepening point of a block that
    already has that many layers; ``max_layers`` (50) masks every deepening point once the network has that
    many tokens (pools included). A search space can also mark single tokens ``can_widen=False`` /
    ``can_deepen=False`` (the search does so for actions that would exceed ``--max-params``). The masks
    are what the controller samples from, so no action beyond a limit is ever offered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "LayerToken",
    "SearchSpace",
    "next_width",
    "token_string",
    "blocks",
    "widen_mask",
    "deepen_points",
    "apply_wider",
    "apply_deeper",
]

KINDS = ("conv", "fc", "pool")


@dataclass(frozen=True)
class LayerToken:
    """One layer as the controller sees it."""

    kind: str  # "conv" | "fc" | "pool"   (pooling marks block boundaries)
    width: int  # filters or units (0 for pool)
    kernel: int  # conv kernel size (0 for fc/pool)
    name: str  # the IR node name the token stands for (the search maps actions back through it)
    is_output: bool = False  # the final classifier layer (never widened, never deepened after)
    can_widen: bool = True  # False: the search space forbids widening this layer (e.g. a parameter cap)
    can_deepen: bool = True  # False: no new layer may go after this one (e.g. a parameter cap)
    # Spaces derived from arbitrary graphs (graph_space.py) also say what the IR allows (through can_widen /
    # can_deepen) and how widths move together: a layer whose output channels are coupled to another layer's
    # (a residual add, a depthwise conv after it) is widened by that layer's pass (the group's lead), so it
    # cannot be widened itself and lists (lead, times) in `coupled`: widening the lead by d units widens it by
    # times * d (times > 1 when the lead's channels reach it more than once, via a concat). times is None when
    # a channel shuffle scatters part of the lead's channels into it: it then grows by the copies the mapping
    # happens to draw from those channels, which only the pass knows (the search re-reads the tokens from the
    # graph after every action, so the controller still sees exactly what the pass did).
    coupled: tuple = ()
    step: int = 1  # the width may only grow by multiples of this (channels passing a grouped conv: its groups)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layer token {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "pool":
            if self.width != 0 or self.kernel != 0 or self.is_output:
                raise ValueError(f"layer token {self.name!r}: a pool token has width 0, kernel 0, is no output")
        elif self.width <= 0:
            raise ValueError(f"layer token {self.name!r}: a {self.kind} layer needs a positive width")
        if self.kind == "conv" and self.kernel <= 0:
            raise ValueError(f"layer token {self.name!r}: a conv layer needs a positive kernel size")
        if self.kind == "fc" and self.kernel != 0:
            raise ValueError(f"layer token {self.name!r}: an fc layer has kernel 0, not {self.kernel}")


@dataclass(frozen=True)
class SearchSpace:
    """Width lists (the targets of Net2Wider) and the kernel sizes Net2Deeper may insert."""

    conv_widths: tuple[int, ...]
    fc_widths: tuple[int, ...]
    kernels: tuple[int, ...] = (1, 3, 5)
    max_layers_per_block: int | None = None  # None: no limit
    max_layers: int | None = None  # tokens in all (pools included); None: no limit

    def __post_init__(self) -> None:
        for field in ("max_layers_per_block", "max_layers"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"search space: {field} must be a positive integer or None, got {value}")
        for field, values in (("conv_widths", self.conv_widths), ("fc_widths", self.fc_widths),
                              ("kernels", self.kernels)):
            values = tuple(int(v) for v in values)
            # next_width walks the list in order, so it must be strictly increasing.
            if not values or any(v <= 0 for v in values) or any(a >= b for a, b in zip(values, values[1:])):
                raise ValueError(f"search space: {field} must be a non-empty, strictly increasing list of "
                                 f"positive integers, got {values}")
            object.__setattr__(self, field, values)
        if any(k % 2 == 0 for k in self.kernels):
            # An identity kernel puts its 1 at the centre [k//2, k//2]; only odd sizes have a centre.
            raise ValueError(f"search space: kernels must be odd (identity init needs a centre), got {self.kernels}")

    @classmethod
    def paper(cls) -> SearchSpace:
        """The paper's lists for CIFAR-scale plain CNNs."""
        return cls(
            conv_widths=(16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512, 576, 640),
            fc_widths=(64, 128, 256, 384, 512, 640, 768, 896, 1024, 1152, 1280),
        )

    @classmethod
    def small(cls) -> SearchSpace:
        """Small lists for CPU searches (e.g. the 8x8 ``digits`` images)."""
        return cls(conv_widths=(4, 8, 12, 16, 24, 32, 48, 64), fc_widths=(8, 16, 32, 48, 64, 96, 128))

    def widths(self, kind: str) -> tuple[int, ...]:
        if kind == "conv":
            return self.conv_widths
        if kind == "fc":
            return self.fc_widths
        raise ValueError(f"search space: a {kind!r} layer has no width list")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SearchSpace:
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})


def next_width(token: LayerToken, space: SearchSpace) -> int | None:
    """The next value of the width list strictly larger than the token's width (and reachable in steps of
    `token.step`); None at the maximum or for pool."""
    if token.kind == "pool":
        return None
    return next((w for w in space.widths(token.kind) if w > token.width and (w - token.width) % token.step == 0),
                None)


def token_string(t: LayerToken) -> str:
    """``conv-32-3``, ``fc-64``, ``pool``: the encoder's vocabulary entries (before unknown-width mapping)."""
    if t.kind == "conv":
        return f"conv-{t.width}-{t.kernel}"
    if t.kind == "fc":
        return f"fc-{t.width}"
    return "pool"


def blocks(tokens: Sequence[LayerToken]) -> list[list[int]]:
    """Indices of the conv / fc tokens of each block, in order; the fc stack is always the last block."""
    out: list[list[int]] = []
    current: list[int] = []
    in_fc = False
    for i, t in enumerate(tokens):
        if t.kind == "pool":
            if current:
                out.append(current)
            current = []
            continue
        if t.kind == "fc" and not in_fc:
            # The first fc opens the fc block even if no pool closed the last conv block.
            in_fc = True
            if current:
                out.append(current)
            current = []
        elif t.kind == "conv" and in_fc:
            raise ValueError(f"layer token {t.name!r}: a conv layer after the fc stack has no block")
        current.append(i)
    if current:
        out.append(current)
    return out


def widen_mask(tokens: Sequence[LayerToken], space: SearchSpace) -> list[bool]:
    """Which tokens Net2Wider may widen: not pool, not the output layer, not already at the maximum width."""
    return [not t.is_output and t.can_widen and next_width(t, space) is not None for t in tokens]


def deepen_points(tokens: Sequence[LayerToken], space: SearchSpace | None = None) -> list[list[bool]]:
    """Per block (as ``blocks`` orders them), per layer: may Net2Deeper insert after it?

    Not after the output, not after a token marked ``can_deepen=False``, nowhere in a block at the space's
    ``max_layers_per_block`` and nowhere once the network has ``max_layers`` tokens.
    """
    per_block = space.max_layers_per_block if space is not None else None
    total = space.max_layers if space is not None else None
    full = total is not None and len(tokens) >= total
    return [[not full and (per_block is None or len(block) < per_block) and not tokens[i].is_output
             and tokens[i].can_deepen for i in block] for block in blocks(tokens)]


def _check_length(tokens: Sequence[LayerToken], mask: Sequence[bool]) -> None:
    if len(mask) != len(tokens):
        raise ValueError(f"widen mask has {len(mask)} entries for {len(tokens)} tokens")


def apply_wider(tokens: Sequence[LayerToken], widen: Sequence[bool], space: SearchSpace) -> list[LayerToken]:
    """Widen every token whose mask entry is true to its next width; refuse a token that cannot be widened."""
    _check_length(tokens, widen)
    allowed = widen_mask(tokens, space)
    for t, w, ok in zip(tokens, widen, allowed):
        if w and not ok:
            why = "it is the output layer" if t.is_output else (
                "it is a pool" if t.kind == "pool" else
                "the search space forbids it" if not t.can_widen else f"{t.width} is the maximum width")
            raise ValueError(f"cannot widen {t.name!r}: {why}")
    # As the search applies a decision: one pass per marked layer, in order, each to the next width of the
    # layer's width *before* the decision, skipped if an earlier pass already made it that wide; a pass that
    # widens a lead by d widens the layers coupled to it by times * d. A layer coupled through a channel
    # shuffle (times None) keeps its width here: how much it grows is drawn by the pass.
    widths = [t.width for t in tokens]
    followers = {}
    for k, t in enumerate(tokens):
        for lead, times in t.coupled:
            followers.setdefault(lead, []).append((k, times))
    for i, (t, w) in enumerate(zip(tokens, widen)):
        if not w:
            continue
        target = next_width(t, space)
        if widths[i] >= target:
            continue
        delta, widths[i] = target - widths[i], target
        for k, times in followers.get(t.name, ()):
            if times is not None:
                widths[k] += times * delta
    return [dataclasses.replace(t, width=wd) if wd != t.width else t for t, wd in zip(tokens, widths)]


def _fresh_name(base: str, taken: set[str]) -> str:
    from easc.ir import Namespace

    return Namespace(taken).fresh(base)


def apply_deeper(tokens: Sequence[LayerToken], block: int, layer_in_block: int, kernel: int | None
                 ) -> list[LayerToken]:
    """Insert a same-width layer after layer ``layer_in_block`` of block ``block``.

    A conv gets a conv with ``kernel``; an fc gets an fc (``kernel`` is ignored). The new token is named
    ``deepen_<name>``, suffixed ``_2``, ``_3``... when a layer is deepened more than once (easc.ir.names).
    """
    bl = blocks(tokens)
    if not 0 <= block < len(bl):
        raise ValueError(f"cannot deepen: block {block} does not exist (the network has {len(bl)} blocks)")
    if not 0 <= layer_in_block < len(bl[block]):
        raise ValueError(f"cannot deepen: block {block} has {len(bl[block])} layers, no layer {layer_in_block}")
    at = bl[block][layer_in_block]
    parent = tokens[at]
    if parent.is_output:
        raise ValueError(f"cannot deepen after {parent.name!r}: it is the output layer")
    if parent.kind == "conv":
        if kernel is None or kernel <= 0 or kernel % 2 == 0:
            raise ValueError(f"cannot deepen after {parent.name!r}: a conv needs an odd kernel size, got {kernel}")
        k = kernel
    else:
        k = 0
    name = _fresh_name(f"deepen_{parent.name}", {t.name for t in tokens})
    new = LayerToken(parent.kind, parent.width, k, name)
    return [*tokens[: at + 1], new, *tokens[at + 1:]]
