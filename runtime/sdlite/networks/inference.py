"""onnxruntime sessions for the exported graphs, on the CPU or a CUDA GPU.

A session is made once per graph and reused. Its optimised graph is cached on disk (keyed by the
sha256 of the very bytes optimised, the onnxruntime version, the providers and the CPU), so the second
start of a process skips onnxruntime's graph optimisation. Threads follow the cores this process may
use.

A graph reaches onnxruntime only as bytes that hold all of it: one whose tensors refer to external
data is refused (onnxscan.py), and onnxruntime is told to look for external data in an empty folder
of this process's own, so that not even a reference the scan missed can read a file. What is cached
is thus made from the graph's bytes alone, and found again only by their hash.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import io
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from ..errors import SdliteError
from ..onnxscan import check_self_contained

try:  # glibc's; elsewhere (macOS, Windows) freed memory is not kept back the same way
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError, TypeError):
    _malloc_trim = None

DEVICES = ("cpu", "cuda", "auto")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CACHE_DIR_ENV = "SDLITE_CACHE_DIR"
# cuDNN's exhaustive search (onnxruntime's default) times every convolution algorithm on the first run
# of each input shape: 0.74 s before the first SD decode at 512x512 on an H200, against 0.07 s for its
# heuristic choice, which ran as fast from then on (22.8 vs 22.9 ms a decode).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def give_back_freed_memory() -> None:
    """glibc keeps freed blocks smaller than 32 MB for reuse instead of returning them; run after run they
    add up to a gigabyte beside what tiles in step hold (SD decoder, 768x512 in tiles of 43: peak RSS
    3.43 GiB, 2.20 GiB with this after every run, which costs 10% in time)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise SdliteError("--device cuda: this onnxruntime has no CUDA support (install onnxruntime-gpu and a CUDA driver)")
        preload_cuda_libraries()
        return [CUDA, CPU]
    if device == "auto":
        if CUDA in available:
            preload_cuda_libraries()
            return [CUDA, CPU]
        return [CPU]
    raise SdliteError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")


@functools.cache
def preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN installed as pip packages (its `cuda` and `cudnn` extras) only
    when they are loaded first; libraries it cannot find are reported when a session starts instead.
    Its loader prints what it misses on stdout, which may be carrying a picture."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()


def resolve_device(device: str) -> str:
    """cpu or cuda: where `device` runs the graphs."""
    return "cuda" if providers_for(device)[0] == CUDA else "cpu"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdlite"


def _cpu_identity() -> str:
    """What the optimised graph depends on besides the graph: onnxruntime lays convolutions out for
    the CPU's vector width, so a cache must not travel to another kind of CPU."""
    identity = platform.machine()  # not platform.processor(): on Linux it runs `uname -p` found on $PATH
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            identity += next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return identity


def cached_graph_path(sha256: str, providers: list[str]) -> Path:
    key = hashlib.sha256(f"{sha256} {ort.__version__} {providers} {_cpu_identity()}".encode()).hexdigest()[:24]
    return cache_dir() / f"{key}.onnx"


@functools.cache
def nowhere() -> str:
    """An empty folder, private to this process and removed at exit, where onnxruntime is told to find
    the external data of graphs loaded from bytes (by default it looks in the current directory)."""
    folder = tempfile.mkdtemp(prefix="sdlite-no-external-data-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def session_options(threads: int | None = None, arena: bool = True) -> ort.SessionOptions:
    """`arena`: onnxruntime keeps the memory of a run for the next; without it, memory goes back as the
    run frees it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1  # the graphs are one chain of convolutions: nothing runs beside it
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # With a memory pattern, every run after the first takes one block planned for the whole run, which
    # the arena cannot carve out of the chunks the first run left: from the second run on it holds both
    # (2.85 GiB against 1.69 for a 69-cell tile of the int8 SD decoder). Without it, runs reuse the
    # first run's chunks, at the same speed (measured 4.8 s a run either way).
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = arena
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", nowhere())
    return options


def new_session(model: Path | bytes, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A session on the first of `providers` that starts. onnxruntime announces a provider that failed
    and its fallback to the next one with print(), onto a stdout that may be carrying a picture; whether
    CUDA started is read from the session instead. A provider failing later, in a run, is an error
    rather than another such fallback."""
    with contextlib.redirect_stdout(io.StringIO()):
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers,
                                       provider_options=[CUDA_OPTIONS if p == CUDA else {} for p in providers])
    session.disable_fallback()
    return session


class Graph:
    """One graph: an onnxruntime session made once and reused. Names are one name or a list of them;
    a call takes the inputs in that order and gives one array, or a tuple for several outputs."""

    def __init__(self, model: Path | bytes, device: str, input_name: str | Sequence[str],
                 output_name: str | Sequence[str], cache: bool = False, threads: int | None = None,
                 label: str | None = None, arena: bool = True):
        """`model` is a file or the graph's bytes; either way onnxruntime gets the bytes, checked to hold
        the whole graph (no external data), so what was read is exactly what runs. With `cache`, the
        optimised graph is cached under the sha256 of those bytes. `arena`: see session_options."""
        providers = providers_for(device)
        self.path = None if isinstance(model, bytes) else Path(model)
        self.label = label or str(self.path or "the graph")
        if self.path is not None:
            try:
                model = self.path.read_bytes()
            except OSError as exc:
                raise SdliteError(f"cannot read {self.label}: {exc.strerror or exc}") from None
        check_self_contained(model, self.label)
        self.input_names = [input_name] if isinstance(input_name, str) else list(input_name)
        self.output_names = [output_name] if isinstance(output_name, str) else list(output_name)
        self.arena = arena
        self.session = None
        if cache:
            self.session = self._cached_session(model, providers, hashlib.sha256(model).hexdigest(), threads)
        if self.session is None:
            self.session = self._session(model, session_options(threads, arena), providers)
        self.on_cuda = self.session.get_providers()[0] == CUDA
        if device == "cuda" and not self.on_cuda:  # onnxruntime fell back to the CPU (see new_session)
            raise SdliteError("--device cuda: onnxruntime could not start CUDA (are the CUDA 12/13 and cuDNN 9 "
                              "libraries installed? pip install 'onnxruntime-gpu[cuda,cudnn]' brings them)")

    def _session(self, model: bytes, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            return new_session(model, options, providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise SdliteError(f"cannot load {self.label}: {str(exc).splitlines()[0]}") from None

    def _cached_session(self, model: bytes, providers: list[str], sha256: str,
                        threads: int | None) -> ort.InferenceSession | None:
        """A session from the cached optimised graph, made and cached first if there is none; None when
        the cache cannot be used (a read-only home, say), so the caller optimises in memory instead.
        The session that optimises only writes the cache: it holds more than one loaded from the cached
        graph (SD int8 decoder: 416 against 230 MiB once made, and a 2048x2048 decode peaked at 3.11 GiB
        against 2.15 GiB), so the session kept is always loaded from the cache."""
        cached = cached_graph_path(sha256, providers)
        options = session_options(threads, self.arena)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done already
        for _ in range(2):  # a stale or damaged cache entry is made again, once
            if not cached.is_file() and not self._write_cache(model, providers, cached, threads):
                return None
            try:
                return new_session(cached, options, providers)
            except Exception:
                cached.unlink(missing_ok=True)
        return None

    def _write_cache(self, model: bytes, providers: list[str], cached: Path, threads: int | None) -> bool:
        """Optimises the graph into `cached`; False when the cache cannot be written."""
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        if not os.access(cached.parent, os.W_OK):
            return False
        staging = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        options = session_options(threads, self.arena)
        options.optimized_model_filepath = str(staging)
        try:
            self._session(model, options, providers)
            os.replace(staging, cached)  # whole or not at all, even with several processes starting at once
            return True
        except OSError:
            return False
        finally:
            staging.unlink(missing_ok=True)
            give_back_freed_memory()  # the optimising session's memory, before the kept session is loaded

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, *arrays: np.ndarray, release: bool = False) -> np.ndarray | tuple[np.ndarray, ...]:
        """The graph's output, or a tuple of them, for inputs given in the graph's order; with `release`,
        the memory arena gives back what it holds when the run ends (after the last tile of a large
        picture, so the next network starts from nothing)."""
        options = None
        if release and self.arena:
            options = ort.RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0" if self.on_cuda else "cpu:0")
        try:
            if self.on_cuda:  # the outputs are made on the GPU and copied back once
                binding = self.session.io_binding()
                for name, array in zip(self.input_names, arrays):
                    binding.bind_cpu_input(name, np.ascontiguousarray(array))
                for name in self.output_names:
                    binding.bind_output(name, "cuda")
                self.session.run_with_iobinding(binding, options)
                outputs = binding.copy_outputs_to_cpu()
            else:
                outputs = self.session.run(self.output_names, dict(zip(self.input_names, arrays)), options)
        except Exception as exc:  # onnxruntime's untyped errors: above all, memory it could not get
            message = str(exc).splitlines()[0]
            if "Failed to allocate memory" in message:
                shape = "x".join(map(str, arrays[0].shape))
                raise SdliteError(f"not enough memory to run {self.label} on a {shape} input "
                                  f"(lower --max-pixels or --max-memory, or use a smaller picture)") from None
            raise SdliteError(f"{self.label} failed: {message}") from None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
