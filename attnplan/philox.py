"""Philox4x32-10 and the dropout keep mask of docs/semantics.md, on NumPy or CuPy arrays.

The GPU kernels implement the same function in kernels/common/philox.cuh; the test suite
checks the two bit for bit.
"""

from __future__ import annotations

import numpy as np

_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
_MASK32 = 0xFFFFFFFF


def _mulhilo(multiplier: int, value, xp):
    product = value.astype(np.uint64) * xp.uint64(multiplier)
    return (product >> xp.uint64(32)).astype(np.uint32), (product & xp.uint64(_MASK32)).astype(np.uint32)


def philox4x32(counter: tuple, key: tuple, xp=np) -> tuple:
    """Four uint32 output words for broadcastable uint32 counter words and a 2-word key."""
    c0, c1, c2, c3 = (xp.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for round_index in range(ROUNDS):
        hi0, lo0 = _mulhilo(_MULTIPLIERS[0], c0, xp)
        hi1, lo1 = _mulhilo(_MULTIPLIERS[1], c2, xp)
        c0, c1, c2, c3 = hi1 ^ c1 ^ xp.uint32(k0), lo1, hi0 ^ c3 ^ xp.uint32(k1), lo0
        if round_index < ROUNDS - 1:
            k0, k1 = (k0 + _WEYL[0]) & _MASK32, (k1 + _WEYL[1]) & _MASK32
    return c0, c1, c2, c3


def dropout_threshold(dropout_p: float) -> int:
    """Elements whose random word is below this are dropped."""
    return min(int(np.floor(dropout_p * 2.0**32)), _MASK32)


def dropout_keep_mask(seed: int, batch: int, heads, rows, cols, dropout_p: float, xp=np):
    """Boolean keep mask broadcast over `heads` x `rows` x `cols` (each an integer array,
    shaped to broadcast, e.g. heads[:, None, None], rows[None, :, None], cols[None, None, :])."""
    heads, rows, cols = (xp.asarray(a, dtype=np.uint32) for a in (heads, rows, cols))
    words = philox4x32((cols // 4, rows, heads, xp.uint32(batch)), (seed & _MASK32, seed >> 32), xp)
    lane = cols % 4
    chosen = xp.where(lane == 0, words[0], xp.where(lane == 1, words[1], xp.where(lane == 2, words[2], words[3])))
    return chosen >= xp.uint32(dropout_threshold(dropout_p))
