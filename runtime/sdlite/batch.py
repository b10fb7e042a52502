"""Many files through one model: in this process, or spread over worker processes that each load it once.

Workers beat one process's threads when much of the work per image is serial (reading and writing
image files, range coding, small models whose layers are too short to split well over cores); each
worker then gets an equal share of the cores for onnxruntime's threads.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterator

from PIL import Image

from .codec import Codec
from .errors import SdliteError
from .networks.inference import available_cores

# (codec, source name, target name) -> (bytes read, bytes written, a one-line summary of the result);
# raises SdliteError for a bad file
Work = Callable[[Codec, str, str], tuple[int, int, str]]


@dataclass
class Outcome:
    source: str
    target: str
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    summary: str = ""


def default_jobs(files: int) -> int:
    return max(1, min(available_cores(), files))


def run_one(codec: Codec, work: Work, source: str, target: str) -> Outcome:
    outcome = Outcome(source, target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome.bytes_in, outcome.bytes_out, outcome.summary = work(codec, source, target)
        except SdliteError as exc:
            outcome.error = str(exc)
    # A decompression bomb's warning is followed by its refusal, which says it.
    outcome.warnings = [str(w.message) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)]
    return outcome


_worker: tuple[Codec, Work] | None = None


def _start_worker(codec: Codec, work: Work) -> None:
    global _worker
    _worker = codec, work


def _in_worker(source: str, target: str) -> Outcome:
    codec, work = _worker
    return run_one(codec, work, source, target)


def run_all(codec: Codec, work: Work, pairs: list[tuple[str, str]], jobs: int = 1) -> Iterator[Outcome]:
    """The outcome of `work` on each (source, target) pair, in the order they finish.

    With jobs > 1, each worker gets a copy of `codec` (sessions are made in the worker, on first use)
    with its share of the cores for threads.
    """
    if jobs <= 1 or len(pairs) <= 1:
        for source, target in pairs:
            yield run_one(codec, work, source, target)
        return
    worker_codec = codec.copy(threads=max(1, available_cores() // jobs))
    pool = ProcessPoolExecutor(jobs, initializer=_start_worker, initargs=(worker_codec, work))
    try:
        futures = [pool.submit(_in_worker, source, target) for source, target in pairs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        # Interrupted, the run stops at the files under way (each written whole or not at all).
        pool.shutdown(wait=True, cancel_futures=True)
