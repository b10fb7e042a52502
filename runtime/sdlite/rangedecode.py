"""The entropy decoders of methods 0 (and so 1) and 2, compiled (_rangedecode.c), behind numpy arrays.

constriction, which writes the files, decodes a symbol of these adaptive tables by summing its whole
probability table: 0.1 to 3 million symbols a second, and minutes for a small hostile file. The
compiled loops build each table once per row and search it, and also run the per-row bookkeeping
that made narrow pictures slow in numpy. The format is unchanged (docs/FORMAT.md, docs/METHODS.md).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path

import numpy as np

from .errors import SdliteError

DECODED, UNDECODABLE, WORDS_LEFT, CUT_SHORT, NO_MEMORY = range(5)
PREDICTIVE_CONTEXTS = 144


def _load() -> ctypes.CDLL:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_rangedecode{suffix}"
        if path.is_file():
            library = ctypes.CDLL(str(path))
            break
    else:
        raise ImportError(f"sdlite's compiled decoder is missing from {here}: install sdlite with pip "
                          f"(or run `python setup.py build_ext --inplace` in a source tree)")
    words = np.ctypeslib.ndpointer(np.uint32, flags="C_CONTIGUOUS")
    out = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS, WRITEABLE")
    sizes = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    library.decode_adaptive.argtypes = [words, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                        sizes, out]
    library.decode_predictive.argtypes = [words, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                          ctypes.c_int32, out]
    for function in (library.decode_adaptive, library.decode_predictive):
        function.restype = ctypes.c_int32
    return library


_library = _load()


def _words(payload: bytes) -> np.ndarray:
    if len(payload) % 4:
        raise SdliteError("corrupt file: the payload is not a whole number of 32-bit words")
    return np.ascontiguousarray(np.frombuffer(payload, "<u4"), dtype=np.uint32)


def _check(status: int) -> None:
    if status == UNDECODABLE:
        raise SdliteError("corrupt file: the payload cannot be decoded (a quantile outside the range coder's)")
    if status == WORDS_LEFT:
        raise SdliteError("corrupt file: the payload holds more data than the latent shape in the header")
    if status == CUT_SHORT:
        raise SdliteError("corrupt file: the payload is cut short (or damaged): it ends before its last symbol")
    if status == NO_MEMORY:
        raise SdliteError("not enough memory for the entropy decoder's tables")


def decode_adaptive(payload: bytes, shape: tuple[int, int, int], sizes: np.ndarray) -> np.ndarray:
    """Method 0's symbols (FORMAT.md 3.3), int32 of `shape`; channels of one symbol are all 0."""
    words = _words(payload)
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    if sizes.shape != (shape[0],) or sizes.min(initial=1) < 1:
        raise ValueError("one alphabet size of at least 1 per channel")
    symbols = np.zeros(shape, np.int32)
    _check(_library.decode_adaptive(words, len(words), *shape, sizes, symbols))
    return symbols


def decode_predictive(payload: bytes, shape: tuple[int, int, int], largest: int) -> np.ndarray:
    """Method 2's levels (METHODS.md), int32 of `shape` in [-largest, largest]; largest >= 1."""
    words = _words(payload)
    if not 1 <= largest < 1 << 15:
        raise ValueError("largest must be from 1 to 32767")
    levels = np.zeros(shape, np.int32)
    _check(_library.decode_predictive(words, len(words), *shape, largest, levels))
    return levels


# The most probability-table entries that decoding one file may build (each a division, a sum and a
# multiplication: about a second on one core). Tables are built once per latent row, for each coded
# channel (method 0) or context in use (method 2), so the work grows with rows x alphabet and not
# only with the symbols; a real 4096x4096 file builds at most 2^26. Only a latent far narrower than
# it is tall, with alphabets of hundreds of levels, comes near.
MAX_TABLE_ENTRIES = 1 << 28


def adaptive_table_entries(shape: tuple[int, int, int], sizes: np.ndarray) -> int:
    return shape[1] * sum(int(size) + 1 for size in sizes if size > 1)


def predictive_table_entries(shape: tuple[int, int, int], largest: int) -> int:
    return shape[1] * min(PREDICTIVE_CONTEXTS, shape[0] * shape[2]) * (2 * largest + 2)


def check_work(entries: int, writing: bool = False) -> None:
    """Refuses, before any work, a latent whose decoding would build more than MAX_TABLE_ENTRIES."""
    if entries <= MAX_TABLE_ENTRIES:
        return
    if writing:
        raise SdliteError(f"this latent is too narrow for its range of levels: decoding it would build {entries:,} "
                          f"probability-table entries, above the limit of {MAX_TABLE_ENTRIES:,} (use a lower "
                          f"quality or another method)")
    raise SdliteError(f"the file's entropy decoding would build {entries:,} probability-table entries, above "
                      f"the limit of {MAX_TABLE_ENTRIES:,} (sdlite does not write such files)")
