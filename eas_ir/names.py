"""The name authority: every new node, value or layer name in easc comes from a `Namespace`.

One rule everywhere (the style guide's "suffixed on collision", in the manner of torch.fx's `_Namespace`
and onnx-ir's name authority):

    fresh(base)  =  base            if base is free
                    base_k          otherwise, for the smallest k >= 2 with base_k free

The suffix is appended, never substituted, and always counted from the *base*, so the third deepen of
`relu_1` is `deepen_relu_1_3` (not `deepen_relu_1_2_2`, which the older per-module generators produced),
and a node a pass inserts keeps naming the node it came from. `fresh_stem(base, suffixes)` is the same
rule for a family of names that must share one number (`stem`, `stem_bn`, `stem_relu`, ...).
`counter(base)` hands out `base_1`, `base_2`, ... (builders number nodes by op that way; the ONNX importer
counts from 0, `Conv_0`, as exporters name unnamed nodes).

A Namespace remembers what it handed out, so a pass inserting several nodes asks one Namespace for all
of them, and two names it gives can never collide.
"""

from __future__ import annotations

from typing import Iterable


class Namespace:
    """A set of taken names that hands out fresh ones by the rule in the module doc."""

    def __init__(self, taken: Iterable[str] = ()):
        self._taken = set(taken)
        self._next: dict = {}  # base -> the next k to try (speeds up long runs of one base)

    def __contains__(self, name) -> bool:
        return name in self._taken

    def claim(self, name: str) -> str:
        """Take `name` as it is (imported models keep their own names); returns it."""
        self._taken.add(name)
        return name

    def fresh(self, base: str) -> str:
        """`base` if free, else `base_k` for the smallest free k >= 2; the name is taken."""
        if base not in self._taken:
            return self.claim(base)
        k = self._next.get(base, 2)
        while f"{base}_{k}" in self._taken:
            k += 1
        self._next[base] = k + 1
        return self.claim(f"{base}_{k}")

    @staticmethod
    def first_free(base: str, taken) -> str:
        """The rule of `fresh` against a predicate `taken(name)`, taking nothing: for a holder of names that
        takes them itself later (a builder, when the node is added)."""
        name, k = base, 2
        while taken(name):
            name, k = f"{base}_{k}", k + 1
        return name

    def fresh_stem(self, base: str, suffixes: Iterable[str]) -> str:
        """The first of `base`, `base_2`, `base_3`, ... such that stem + s is free for every suffix.

        All the names stem + s are taken.
        """
        suffixes = tuple(suffixes) or ("",)
        k = 1
        while True:
            stem = base if k == 1 else f"{base}_{k}"
            if all(stem + s not in self._taken for s in suffixes):
                for s in suffixes:
                    self.claim(stem + s)
                return stem
            k += 1

    def counter(self, base: str, start: int = 1) -> str:
        """`base_1`, `base_2`, ... (from `start`): the next numbered name of `base` that is free."""
        k = self._next.get(("#", base), start)
        while f"{base}_{k}" in self._taken:
            k += 1
        self._next[("#", base)] = k + 1
        return self.claim(f"{base}_{k}")
