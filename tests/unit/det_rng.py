"""A deterministic rng for tests of the protocol core (so hypothesis can replay failures)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable


def det_rng(seed: bytes) -> Callable[[int], bytes]:
    """SHAKE-256 over `seed` and a counter: the same bytes for the same seed and calls."""
    counter = [0]

    def rng(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(seed + counter[0].to_bytes(4, "big")).digest(n)

    return rng
