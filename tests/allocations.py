"""The most bytes numpy holds at once while a function runs."""

from __future__ import annotations


def peak_allocated(function, *args):
    """The result of function(*args) and the most bytes that numpy (through tracemalloc) held at once
    while it ran, beyond what was held before."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

