"""A synthetic reward: a known function of the architecture standing in for validation accuracy.

Used to check that a controller learns without training any network (tests/test_controller.py and
benchmarks/bench_rl_vs_random.py). The task starts from `demo_tokens()` (the released demo net's shape,
smaller: three conv blocks, a global pool, one hidden fc, the classifier) in `SearchSpace.small()`.

The score prefers new conv layers with kernel 3 (+1 each) over kernels 1 and 5 (-1/2 each) and over
deepening the fc stack (0), and a wider first conv layer (list steps above its start width of 8). With 4
wider + 5 deeper actions the score s ranges over [-0.3, 1] (best: always widen conv_1, always deepen a conv
with kernel 3); random choices average s ~ 0.2. Accuracy = 0.5 + 0.4 s.
"""

from __future__ import annotations

from typing import Sequence

from .tokens import LayerToken, SearchSpace

START_WIDTH = 8


def demo_tokens() -> list:
    conv = lambda name: LayerToken("conv", START_WIDTH, 3, name)  # noqa: E731
    pool = lambda name: LayerToken("pool", 0, 0, name)  # noqa: E731
    return [conv("conv_1"), pool("pool_1"), conv("conv_2"), pool("pool_2"), conv("conv_3"), pool("gap"),
            LayerToken("fc", 16, 0, "fc_1"), LayerToken("fc", 10, 0, "fc_2", is_output=True)]


def synthetic_accuracy(tokens: Sequence[LayerToken], space: SearchSpace | None = None) -> float:
    """The accuracy the synthetic task gives the network `tokens` grew into from `demo_tokens()`."""
    space = space or SearchSpace.small()
    convs = [t for t in tokens if t.kind == "conv"]
    new_k3 = sum(t.kernel == 3 for t in convs) - 3  # the demo net starts with three 3x3 convs
    new_other = sum(t.kernel != 3 for t in convs)
    depth_score = (new_k3 - 0.5 * new_other) / 5
    width_score = (space.conv_widths.index(convs[0].width) - space.conv_widths.index(START_WIDTH)) / 4
    return 0.5 + 0.4 * (0.6 * depth_score + 0.4 * width_score)
