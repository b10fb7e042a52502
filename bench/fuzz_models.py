"""Fuzzing model folders: mutated manifests and graphs, external data of every kind, each folder loaded
and run (encode and decode a small picture) through the public API.

    python -m bench.fuzz --folders 300 [--model DIR]      (with --inputs 0 for the folders alone)

Every folder must end in a picture or an `SdliteError`; and nothing outside the folder may be read.
Reads are watched two ways: Python's audit hook sees every file Python opens (outside the folder, the
interpreter's own files and the graph cache, it is a failure), and decoy files placed where a hostile
folder could point (the working directory, a folder in it, the folders' parent, a link's target) have
their access time set before the mtime, so the kernel records any read of them, onnxruntime's own
C++ reads included.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import site
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import sdlite
from sdlite import SdliteError

DECOY = np.full(1 << 18, 1234.5, np.float32).tobytes()  # larger than any tensor a test graph reads
EXTREMES = [None, True, -1, 0, 10**9, 2**70, -1e308, float("nan"), float("inf"), "", "x", "\ud800", "../x", [],
            [1.0], [float("nan")] * 3, ["a", "b", "c"], {}, {"encoder": "x"}, [[[[[[[]]]]]]]]
PATHS = ["../outside.onnx", "/dev/zero", "/proc/self/environ", "link.onnx", "sub", "", ".", "decoder.onnx\0x",
         "x" * 5000, "sub/../../outside.onnx", "manifest.json"]
LOCATIONS = ["secret.bin", "sub/secret.bin", "../secret.bin", "../../secret.bin", "{decoy}", "/dev/zero",
             "/proc/self/environ", "link.bin", "", ".", "sub", "manifest.json", "decoder.onnx", "nul\0byte"]
OFFSETS = [("0", "64"), ("0", "99999999999"), ("-1", "64"), ("abc", "64"), ("64", "0"), (None, None)]


class Watch:
    """What the process opens, from Python's audit hook, outside the places it may read."""

    def __init__(self, allowed: list[Path]):
        self.allowed = [str(p.resolve()) for p in allowed]
        self.outside: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args) -> None:
        if not self.active or event != "open" or not isinstance(args[0], (str, bytes)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        if not any(path == root or path.startswith(root + os.sep) for root in self.allowed):
            self.outside.append(path)


class Decoys:
    """Files that no run may read, with their access time set where a read moves it."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(DECOY)
        self.arm()

    def arm(self) -> None:
        for path in self.paths:
            os.utime(path, (0, time.time()))  # relatime updates an atime older than the mtime on any read

    def read(self) -> list[str]:
        return [str(path) for path in self.paths if os.stat(path).st_atime > 0]


class FolderMutator:
    def __init__(self, model: Path, rng: np.random.Generator, decoy: Path):
        self.model = model
        self.manifest = json.loads((model / "manifest.json").read_text())
        self.rng = rng
        self.decoy = decoy
        self.mutations = [self.manifest_value, self.manifest_delete, self.manifest_text, self.graph_path,
                          self.graph_bytes, self.external_data, self.external_no_entries, self.swapped_graphs]

    def __call__(self, folder: Path) -> str:
        for name in os.listdir(self.model):  # hard links: regular files of the folder, at no copying cost
            os.link(self.model / name, folder / name)
        (folder / "manifest.json").unlink()
        (folder / "sub").mkdir()
        (folder / "link.onnx").symlink_to(self.model.parent / "outside.onnx")
        (folder / "link.bin").symlink_to(self.decoy)
        mutation = self.mutations[self.rng.integers(len(self.mutations))]
        manifest = copy.deepcopy(self.manifest)
        text = mutation(folder, manifest)
        (folder / "manifest.json").write_text(text if text is not None else json.dumps(manifest), encoding="utf-8",
                                              errors="surrogatepass")
        return mutation.__name__

    def _pick(self, values):
        return values[self.rng.integers(len(values))]

    def _paths(self, value, prefix=()):
        """Every (path, value) in the manifest's JSON tree."""
        yield prefix, value
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from self._paths(inner, prefix + (key,))
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                yield from self._paths(inner, prefix + (index,))

    def _set(self, manifest, path, value, delete=False) -> None:
        target = manifest
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    def manifest_value(self, folder, manifest):
        paths = [path for path, _ in self._paths(manifest) if path]
        self._set(manifest, self._pick(paths), copy.deepcopy(self._pick(EXTREMES)))

    def manifest_delete(self, folder, manifest):
        paths = [path for path, _ in self._paths(manifest) if path]
        self._set(manifest, self._pick(paths), None, delete=True)

    def manifest_text(self, folder, manifest):
        text = json.dumps(manifest)
        choice = self.rng.integers(4)
        if choice == 0:
            return text[:self.rng.integers(len(text))]
        if choice == 1:
            return "[" * 100_000
        if choice == 2:
            return text.replace('"decoder"', '"decoder", "padding": "' + "x" * (2 << 20) + '", "d"', 1)
        return text + "\ud800"

    def _graph_entries(self, manifest):
        """The graphs that run for a small picture: the float32 encoder and decoder, once the manifest's
        variants and segments (which would be chosen instead, or not run at this size) are dropped."""
        manifest["variants"] = []
        for role in ("encoder", "decoder"):
            manifest[role]["segments"] = None
        return [manifest["encoder"], manifest["decoder"]]

    def graph_path(self, folder, manifest):
        self._pick(self._graph_entries(manifest))["file"] = self._pick(PATHS)
        shutil.copy(self.model / "decoder.onnx", self.model.parent / "outside.onnx")

    def _rewrite(self, folder, entry, data: bytes) -> None:
        path = folder / entry["file"]
        path.unlink()
        path.write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()  # the bytes are as the manifest says

    def graph_bytes(self, folder, manifest):
        entry = self._pick(self._graph_entries(manifest))
        data = bytearray((self.model / entry["file"]).read_bytes())
        choice = self.rng.integers(3)
        if choice == 0:
            for _ in range(1 + self.rng.integers(8)):
                data[self.rng.integers(len(data))] ^= 1 << self.rng.integers(8)
        elif choice == 1:
            data = data[:self.rng.integers(len(data))]
        else:
            data = bytearray(self.rng.bytes(int(self.rng.integers(1, 4096))))
        self._rewrite(folder, entry, bytes(data))

    def external_data(self, folder, manifest):
        import onnx

        entry = self._pick(self._graph_entries(manifest))
        model = onnx.load_from_string((self.model / entry["file"]).read_bytes())
        tensors = [t for t in model.graph.initializer if t.raw_data or t.float_data]
        tensors += [a.t for node in model.graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        tensor = self._pick(tensors)
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        location = self._pick(LOCATIONS).format(decoy=self.decoy)
        offset, length = self._pick(OFFSETS)
        tensor.external_data.add(key="location", value=location)
        if offset is not None:
            tensor.external_data.add(key="offset", value=offset)
            tensor.external_data.add(key="length", value=str(size) if length == "64" else length)
        self._rewrite(folder, entry, model.SerializeToString())

    def external_no_entries(self, folder, manifest):
        import onnx

        entry = self._pick(self._graph_entries(manifest))
        model = onnx.load_from_string((self.model / entry["file"]).read_bytes())
        model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
        self._rewrite(folder, entry, model.SerializeToString())

    def swapped_graphs(self, folder, manifest):
        entries = self._graph_entries(manifest)
        first, second = self._pick(entries), self._pick(entries)
        first["file"], first["sha256"] = second["file"], second["sha256"]


def run_folder(folder: Path, picture, timeout: float) -> tuple[str, str]:
    def alarm(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        codec = sdlite.Codec.load(folder, threads=1, max_pixels=64 * 64)
        data = codec.encode(picture, quality=50)
        codec.decode(data)
        return "image", ""
    except SdliteError as exc:
        message = str(exc)
        if "\n" in message:
            return "multi-line error", message
        return "sdlite error", message
    except TimeoutError:
        return "hang", f"past {timeout} s"
    except Exception as exc:  # anything else is a failure of sdlite's
        return "other exception", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def error_kind(message: str) -> str:
    message = re.sub(r"\S*/folders/\d+", "FOLDER", message.replace("invalid model manifest: ", "manifest: "))
    message = re.sub(r"\.\d+\.", ".N.", message)
    return " ".join(message.split(":")[0:2])[:80]


def fuzz_folders(model: Path, count: int, seed: int = 0, timeout: float = 60.0) -> tuple[str, int]:
    """Runs `count` mutated copies of the model folder; the report's text and the number of failures."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    outcomes, errors, by_mutation, failures = Counter(), Counter(), Counter(), []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        work = root / "cwd"
        (work / "sub").mkdir(parents=True)
        source = root / "source"
        shutil.copytree(model, source)
        decoys = Decoys([work / "secret.bin", work / "sub" / "secret.bin", root / "secret.bin",
                         root / "linked-secret.bin"])
        mutate = FolderMutator(source, rng, root / "linked-secret.bin")
        cache = root / "cache"
        previous = os.getcwd(), os.environ.get("SDLITE_CACHE_DIR")
        os.chdir(work)
        os.environ["SDLITE_CACHE_DIR"] = str(cache)
        interpreter = [Path(p) for p in {sys.prefix, sys.base_prefix, *site.getsitepackages(),
                                         Path(sdlite.__file__).parent} if p]
        watch = Watch([*interpreter, cache, Path("/proc/cpuinfo"), Path(os.devnull)])
        started = time.perf_counter()
        try:
            for number in range(count):
                folder = root / "folders" / str(number)
                folder.mkdir(parents=True)
                mutation = mutate(folder)
                watch.allowed.append(str(folder.resolve()))
                decoys.arm()
                watch.outside.clear()
                watch.active = True
                outcome, detail = run_folder(folder, picture, timeout)
                watch.active = False
                read = decoys.read() + [p for p in watch.outside if not p.startswith(str(root / "folders"))]
                if read and outcome in ("image", "sdlite error"):
                    outcome, detail = "read outside the folder", ", ".join(sorted(set(read)))
                outcomes[outcome] += 1
                by_mutation[mutation, outcome] += 1
                if outcome == "sdlite error":
                    errors[error_kind(detail)] += 1
                elif outcome != "image":
                    failures.append((mutation, outcome, detail))
                watch.allowed.pop()
                shutil.rmtree(folder)
        finally:
            os.chdir(previous[0])
            if previous[1] is None:
                os.environ.pop("SDLITE_CACHE_DIR", None)
            else:
                os.environ["SDLITE_CACHE_DIR"] = previous[1]
        elapsed = time.perf_counter() - started
    lines = [f"model folders tried: {count} in {elapsed:.1f} s",
             "outcomes: " + ", ".join(f"{kind} {n}" for kind, n in outcomes.most_common()),
             "outcomes by mutation:"]
    for family in sorted({family for family, _ in by_mutation}):
        counts = ", ".join(f"{outcome} {n}" for (name, outcome), n in sorted(by_mutation.items()) if name == family)
        lines.append(f"  {family:20s} {counts}")
    lines.append("errors by kind:")
    lines += [f"  {n:5d}  {kind}" for kind, n in errors.most_common()]
    lines.append(f"failures: {len(failures)}")
    lines += [f"  {outcome}: {detail} <- {mutation}" for mutation, outcome, detail in failures[:20]]
    return "\n".join(lines), len(failures)
