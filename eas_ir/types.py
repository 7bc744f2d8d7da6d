"""Value types of the IR: a dtype and a shape whose first dimension is the symbolic batch `N`.

Every node of the IR produces exactly one value, named after the node, and that value carries a
`TensorType`. The batch dimension is always symbolic (`BATCH`), even when an imported file fixes
it to 1, so that a network transformed by easc accepts any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = "N"
"""The symbolic batch dimension: the first dimension of every value."""

DTYPES = ("float32",)
"""Value dtypes the IR knows. CNNs exported by common tools compute in float32."""

MAX_ELEMENTS = 2**30
"""The most elements one tensor may have: a weight, or one sample of an activation (4 GiB of float32).
Files declare shapes before any memory is spent on them; a dimension of 10^9 in a 200-byte file must be
refused, not allocated. Real CNNs are far below it (a 64-channel 2048x2048 activation is 2^28)."""

_SHORT = {"float32": "f32"}
_LONG = {v: k for k, v in _SHORT.items()}


@dataclass(frozen=True)
class TensorType:
    """The type of a value: dtype plus shape `(N, d1, d2, ...)` with `N` symbolic."""

    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        """The channel (or feature) dimension: axis 1 of NCHW or NC values."""
        return int(self.shape[1])

    @property
    def sample_shape(self) -> tuple:
        """The shape of one sample, without the batch dimension."""
        return tuple(int(d) for d in self.shape[1:])

    def with_channels(self, channels: int) -> "TensorType":
        return TensorType((self.shape[0], int(channels)) + tuple(self.shape[2:]), self.dtype)

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{_SHORT.get(self.dtype, self.dtype)}[{dims}]"

    @staticmethod
    def parse(text: str) -> "TensorType":
        """Parse `f32[N,16,8,8]` (the inverse of `str`)."""
        text = text.strip()
        if "[" not in text or not text.endswith("]"):
            raise ValueError(f"not a tensor type: {text!r} (expected e.g. f32[N,3,32,32])")
        short, dims = text[:-1].split("[", 1)
        dtype = _LONG.get(short, short)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {short!r} in {text!r}")
        shape = []
        for d in dims.split(","):
            d = d.strip()
            shape.append(d if d == BATCH else int(d))
        return TensorType(tuple(shape), dtype)


def check_dims(shape, what: str) -> None:
    """Raise ValueError unless every dimension after the batch is a positive int and the sample has at
    most MAX_ELEMENTS elements (for a weight, give the whole shape with `N` absent)."""
    total = 1
    for d in shape:
        if d == BATCH:
            continue
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{what} has dimension {d!r} in shape ({','.join(str(x) for x in shape)}); "
                             "dimensions must be positive integers")
        total *= d
    if total > MAX_ELEMENTS:
        raise ValueError(f"{what} has {total:,} elements per sample, more than easc's limit of {MAX_ELEMENTS:,}")


def batched(sample_shape) -> TensorType:
    """The float32 type of a batch of samples of `sample_shape`."""
    return TensorType((BATCH,) + tuple(int(d) for d in sample_shape))
