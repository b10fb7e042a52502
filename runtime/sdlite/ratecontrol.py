"""Rate control: the largest file that does not exceed a byte budget, by bisection on the quality."""

from __future__ import annotations

from typing import Callable

from .errors import SdliteError

ROUNDS = 14  # quality resolution 100 / 2^14: far finer than the 3% a size target is met within


def largest_within(encode: Callable[[float], bytes], budget: int) -> bytes:
    """`encode(quality)` gives the file at a quality in [0, 100]; sizes grow with quality, nearly
    monotonically, so bisection keeps the largest file found that fits."""
    best = encode(0.0)
    if len(best) > budget:
        raise SdliteError(f"cannot fit in {budget} bytes: the smallest file for this image is {len(best)} bytes")
    top = encode(100.0)
    if len(top) <= budget:
        return top
    low, high = 0.0, 100.0
    for _ in range(ROUNDS):
        middle = (low + high) / 2
        data = encode(middle)
        if len(data) <= budget:
            low = middle
            if len(data) > len(best):
                best = data
        else:
            high = middle
    return best
