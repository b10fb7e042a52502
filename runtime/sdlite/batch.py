"""Many files through one model: in this process, or spread over worker processes that each load it once.

Workers beat one process's threads when much of the work per image is serial (reading and writing
image files, range coding, small models whose layers are too short to split well over cores); each
worker then gets an equal share of the cores for onnxruntime's threads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
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
_busy = False
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_worker(codec: Codec, work: Work, parent: int) -> None:
    global _worker
    _worker = codec, work
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """A worker whose parent is killed (even with SIGKILL) gets SIGTERM from the kernel, instead of living
    on under init and writing outputs nobody waits for. It then stops the file under way (whose output
    is written whole or not at all) and exits. Linux only: elsewhere, an orphan finishes its file."""
    signal.signal(signal.SIGTERM, _stop_worker)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(128 + signal.SIGTERM)


def _stop_worker(signum: int, frame) -> None:
    if _busy:
        raise KeyboardInterrupt  # unwinds the file under way, removing its temporary output
    os._exit(128 + signum)


def _in_worker(source: str, target: str) -> Outcome:
    global _busy
    codec, work = _worker
    _busy = True
    try:
        return run_one(codec, work, source, target)
    except KeyboardInterrupt:
        os._exit(128 + signal.SIGTERM)
    finally:
        _busy = False


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
    pool = ProcessPoolExecutor(jobs, initializer=_start_worker, initargs=(worker_codec, work, os.getpid()))
    try:
        futures = [pool.submit(_in_worker, source, target) for source, target in pairs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        # Interrupted, the run stops at the files under way (each written whole or not at all).
        pool.shutdown(wait=True, cancel_futures=True)
