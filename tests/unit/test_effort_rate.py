"""The effort search's estimate of a latent's rate: code lengths from smoothed histograms, and which way
each level gets cheaper."""

from __future__ import annotations

import numpy as np
import pytest

from sdlite import effort


def test_histogram_rate_counts_code_lengths_and_points_to_cheaper_levels():
    levels = np.zeros((2, 4, 4), dtype=np.int32)
    levels[0, 0, :2] = 1  # channel 0: fourteen zeros and two ones; channel 1: all zeros
    bits, slope = effort.histogram_rate(levels)
    # smoothed counts: channel 0 over levels -1..2 is 0.5, 14.5, 2.5, 0.5 of 18; channel 1 over -1..1 is 0.5, 16.5, 0.5 of 17.5
    expected = -14 * np.log2(14.5 / 18) - 2 * np.log2(2.5 / 18) - 16 * np.log2(16.5 / 17.5)
    assert bits == pytest.approx(expected)
    assert slope[0, 0, 0] > 0  # a one costs more bits going up than coming down to zero
    assert slope[1, 0, 0] == pytest.approx(0.0)  # all zeros: both neighbours equally rare
