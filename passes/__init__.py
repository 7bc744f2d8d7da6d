"""Verified function-preserving rewrites of IR graphs.

Each pass maps a graph to a `PassResult` (a new graph plus a record of what changed) and never
changes its input. `apply_pass` runs a pass by name and checks the result: verifier, signature, and
outputs on seeded probes within `PRESERVATION_RTOL`.

- `widen`        Net2Wider for conv2d / linear (through bn, relu, pooling, flatten, concat, add)
- `deepen`       Net2Deeper: an identity conv/linear + batchnorm (+ relu where exact) after a value
- `skip`         a dense path: concatenate an earlier value onto a later layer's input, zero weights
- `widen_kernel` grow a conv kernel k -> k+2 with zeros and matching padding
"""

from .base import PRESERVATION_RTOL, FunctionNotPreservedError, PassError, PassResult, checked
from .deepen import calibration_stats, deepen
from .pipeline import apply_pass, widen_all
from .skip import skip
from .widen import widen, widenable_layers
from .widen_kernel import widen_kernel

__all__ = ["PRESERVATION_RTOL", "FunctionNotPreservedError", "PassError", "PassResult", "apply_pass",
           "calibration_stats", "checked", "deepen", "skip", "widen", "widen_all", "widen_kernel",
           "widenable_layers"]
