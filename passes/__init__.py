"""Verified function-preserving rewrites of IR graphs.

Each pass maps a graph to a `PassResult` (a new graph, a record of what changed, the nodes it rewrote) and
never changes its input. Passes are objects of one protocol (`base.Pass`: arguments, candidates, reason,
apply; `pipeline.registry()`), and a `PassManager` (`manager.py`) runs chains of them with one generator,
one probe set, one check policy (verifier, then the numeric check of the rewritten region; the end-to-end
check once at the end) and timings. `apply_pass` runs one pass by name in a manager of its own.

- `widen`        Net2Wider for conv2d / linear (through bn, relu, pooling, flatten, concat, add)
- `widen_many`   the same for many layers in one rewrite (a dense block: each later layer gathered once)
- `deepen`       Net2Deeper: an identity conv/linear + batchnorm (+ relu where exact) after a value
- `skip`         a dense path: concatenate an earlier value onto a later layer's input, zero weights
- `widen_kernel` grow a conv kernel k -> k+2 with zeros and matching padding
"""

from .base import PRESERVATION_RTOL, FunctionNotPreservedError, Pass, PassError, PassResult, checked
from .deepen import calibration_stats, deepen
from .manager import PassManager
from .pipeline import apply_pass, registry, widen_all
from .skip import skip
from .widen import widen, widen_many, widenable_layers
from .widen_kernel import widen_kernel

__all__ = ["PRESERVATION_RTOL", "FunctionNotPreservedError", "Pass", "PassError", "PassManager", "PassResult",
           "apply_pass", "calibration_stats", "checked", "deepen", "registry", "skip", "widen", "widen_all",
           "widen_kernel", "widen_many", "widenable_layers"]
