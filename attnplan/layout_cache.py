"""Per-signature memory of what a runner derives from its arguments' layout (cuDNN graphs, kernel
parameter templates, stride verdicts), so that a repeated call does none of that work again."""

from __future__ import annotations

from typing import Any, Callable


class LayoutCache:
    """Values keyed by `BoundArguments.signature` (which fixes every array's type, dtype, shape,
    strides and device).  A None signature is never cached; failures are not cached either, so a bad
    call fails the same way every time.  Bounded: cleared when full."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._entries: dict = {}

    def get(self, signature: Any, make: Callable[[], Any]) -> Any:
        if signature is None:
            return make()
        entry = self._entries.get(signature)
        if entry is None:
            entry = make()
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[signature] = entry
        return entry

    def lookup(self, signature: Any) -> Any:
        """The value kept for `signature`, or None (also for a None signature)."""
        return self._entries.get(signature) if signature is not None else None

    def __len__(self) -> int:
        return len(self._entries)
