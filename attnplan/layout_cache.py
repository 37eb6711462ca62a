"""Per-signature memory of what a runner derives from its arguments' layout (cuDNN graphs, kernel
parameter templates, stride verdicts), so that a repeated call does none of that work again."""

from __future__ import annotations

from typing import Any, Callable


_MISSING = object()


class LayoutCache:
    """Values keyed by `BoundArguments.signature` (which fixes every array's type, dtype, shape,
    strides and device).  A None signature is never cached; failures are not cached either, so a bad
    call fails the same way every time (a check that passed is kept as its None result).  Bounded:
    cleared when full."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._entries: dict = {}

    def get(self, signature: Any, make: Callable[..., Any], *args) -> Any:
        """make(*args), computed once per signature (no closure needed on the per-call path)."""
        if signature is None:
            return make(*args)
        entry = self._entries.get(signature, _MISSING)
        if entry is _MISSING:
            entry = make(*args)
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[signature] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)
