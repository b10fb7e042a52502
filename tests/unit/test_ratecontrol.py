"""Rate control's search for the largest file within a size, on a made-up encoder."""

from __future__ import annotations

from sdlite import ratecontrol


def test_rate_control_keeps_the_largest_file_that_fits():
    sizes = {}

    def encode(quality: float) -> bytes:
        sizes[quality] = int(100 + 9 * quality)
        return bytes(sizes[quality])

    data = ratecontrol.largest_within(encode, 555)
    assert 550 <= len(data) <= 555 and len(data) == max(s for s in sizes.values() if s <= 555)
