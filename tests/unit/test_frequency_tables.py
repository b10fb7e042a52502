"""The learned method's integer frequency tables: values within a table's range and escaped values beyond
it come back exactly, and tables that are not valid are refused."""

from __future__ import annotations

import constriction
import numpy as np
import pytest

import sdlite
from sdlite.methods.quantizer import LARGEST_LEVEL
from sdlite.methods.tables import TOTAL, FrequencyTable, check_frequencies, decode_values, encode_values, \
    frequencies_from_probabilities


def round_trip(tables: list[FrequencyTable], rows: list[np.ndarray]) -> list[np.ndarray]:
    """Each row coded with its table, one after another in one stream, and decoded again."""
    encoder = constriction.stream.queue.RangeEncoder()
    for table, values in zip(tables, rows):
        encode_values(encoder, table, values)
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    return [decode_values(decoder, table, len(values)) for table, values in zip(tables, rows)]


def test_values_inside_and_outside_a_table_round_trip_with_escapes():
    rng = np.random.default_rng(0)
    tables = [FrequencyTable(frequencies_from_probabilities(rng.uniform(0.1, 1, (1, n)))[0], lowest)
              for n, lowest in ((2, 0), (9, -4), (50, -24))]
    rows = [
        np.array([0, 1, -1, 5, 0]),  # a table of one value and the escape: all but the zeros escape
        np.concatenate([rng.integers(-4, 4, 200), [4, -5, LARGEST_LEVEL, -LARGEST_LEVEL]]),  # 4 is lowest + n - 1
        np.array([-24, 24, 25, -25, 1000]),
    ]
    assert all(table.symbols(values)[1].any() for table, values in zip(tables, rows))  # every row escapes
    decoded = round_trip(tables, rows)
    assert all(np.array_equal(got, values) for got, values in zip(decoded, rows))


def test_frequencies_from_probabilities_are_valid_tables():
    probabilities = np.array([[1.0, 0.0, 0.0], [1e-9, 1.0, 1e-9], [0.2, 0.3, 0.5]])
    for row in frequencies_from_probabilities(probabilities):
        check_frequencies(row, "test table")
        assert row.sum() == TOTAL and row.min() >= 1


@pytest.mark.parametrize("frequencies", [
    np.array([TOTAL]),  # no escape
    np.array([TOTAL - 1, 0, 1]),  # a symbol that could never be coded
    np.array([TOTAL, 1]),  # sums past TOTAL
    np.array([100, 100]),  # sums short of it
    np.array([TOTAL + 5, -5]),  # a negative frequency
    np.full((2, 2), TOTAL // 4),  # not one row
])
def test_a_table_that_is_not_valid_is_refused(frequencies):
    with pytest.raises(sdlite.SdliteError, match="scale table is not a valid frequency table"):
        check_frequencies(frequencies, "scale table")
