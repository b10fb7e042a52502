"""Fuzzing the .sdc reader: structured mutations of valid files, sent through the public decode path.

    python -m bench.fuzz --inputs 100000 [--folders 300] [--model DIR] [--seed 0] [--save-dir DIR]

Every input must end in a decoded image or an `SdliteError` with a one-line message: anything else
(another exception, an input slower than --timeout, a MemoryError under the address-space limit) is
a failure, printed and saved to --save-dir, and the exit code is 1.

The seeds are whatever `SdcFile.to_bytes()` writes for a few small pictures, and the mutations work
on those bytes and on the fields of `SdcFile` found by introspection, so the harness follows the
container as methods and fields are added. Most mutations also recompute the trailing CRC-32, so that
they reach the checks behind it instead of all failing at the checksum.
Without --model it builds and exports a small random VAE first (needs torch; about a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import resource
import signal
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

import sdlite
from sdlite import SdcFile, SdliteError

# A fuzzing codec refuses big pictures early, so an input that claims one costs nothing to refuse.
FUZZ_MAX_PIXELS = 64 * 64
SEED_SIZES = [(1, 1), (7, 3), (16, 16), (40, 24), (64, 64)]
SEED_QUALITIES = [0, 50, 100]
EXTREME_INTS = [0, 1, 2, 3, 7, 8, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, -1]
EXTREME_FLOATS = [0.0, -0.0, -1.0, 1e-45, 1e-30, 1e30, 3.4e38, math.inf, -math.inf, math.nan, 1.0]


class Hang(Exception):
    """An input ran past the time limit."""


def reseal(data: bytes) -> bytes:
    """The same bytes with the trailing CRC-32 recomputed, so a mutation gets past the checksum."""
    if len(data) < 4:
        return data
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")


class Mutator:
    """Makes hostile variants of valid .sdc files; each call gives (what was done, the bytes)."""

    def __init__(self, seeds: list[bytes], rng: np.random.Generator):
        self.seeds = seeds
        self.parsed = [SdcFile.from_bytes(seed) for seed in seeds]
        self.rng = rng
        self.mutations = [
            (self.truncate, 2), (self.flip_bits, 2), (self.flip_bits_resealed, 4), (self.overwrite_resealed, 3),
            (self.integer_resealed, 4), (self.field_extreme, 6), (self.field_bytes, 4), (self.insert_or_delete, 2),
            (self.splice, 1), (self.garbage, 1), (self.unchanged, 1),
        ]
        weights = np.array([weight for _, weight in self.mutations], dtype=float)
        self.weights = weights / weights.sum()

    def __call__(self) -> tuple[str, bytes]:
        mutation = self.mutations[self.rng.choice(len(self.mutations), p=self.weights)][0]
        what, data = mutation()
        return f"{mutation.__name__}: {what}", data

    def _seed(self) -> tuple[int, bytes]:
        index = int(self.rng.integers(len(self.seeds)))
        return index, self.seeds[index]

    def _random_bytes(self, count: int) -> bytes:
        return self.rng.integers(0, 256, count, dtype=np.uint8).tobytes()

    def unchanged(self) -> tuple[str, bytes]:
        return "unchanged", self._seed()[1]

    def truncate(self) -> tuple[str, bytes]:
        data = self._seed()[1]
        cut = int(self.rng.integers(len(data)))
        return f"truncate at {cut}", data[:cut]

    def _flip(self, data: bytes) -> tuple[int, bytes]:
        flipped = bytearray(data)
        count = int(self.rng.integers(1, 9))
        for _ in range(count):
            bit = int(self.rng.integers(8 * len(flipped)))
            flipped[bit // 8] ^= 1 << (bit % 8)
        return count, bytes(flipped)

    def flip_bits(self) -> tuple[str, bytes]:
        count, data = self._flip(self._seed()[1])
        return f"flip {count} bits", data

    def flip_bits_resealed(self) -> tuple[str, bytes]:
        data = self._seed()[1]
        count, flipped = self._flip(data[:-4])
        return f"flip {count} bits, resealed", reseal(flipped + data[-4:])

    def overwrite_resealed(self) -> tuple[str, bytes]:
        data = bytearray(self._seed()[1])
        start = int(self.rng.integers(len(data) - 4))
        length = int(self.rng.integers(1, 17))
        data[start : start + length] = self._random_bytes(len(data[start : start + length]))
        return f"random bytes at {start}, resealed", reseal(bytes(data))

    def integer_resealed(self) -> tuple[str, bytes]:
        """An extreme 1-, 2- or 4-byte little-endian integer over any position: sizes, lengths, versions."""
        data = bytearray(self._seed()[1])
        width = int(self.rng.choice([1, 2, 4]))
        start = int(self.rng.integers(max(1, len(data) - 4 - width)))
        value = int(self.rng.choice(EXTREME_INTS)) % (1 << (8 * width))
        data[start : start + width] = value.to_bytes(width, "little")
        return f"{width}-byte integer {value} at {start}, resealed", reseal(bytes(data))

    def field_extreme(self) -> tuple[str, bytes]:
        """One field of the parsed file set to an extreme value of its type, written by to_bytes()."""
        sdc = self.parsed[self._seed()[0]]
        field = dataclasses.fields(sdc)[int(self.rng.integers(len(dataclasses.fields(sdc))))]
        value = getattr(sdc, field.name)
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = int(self.rng.choice(EXTREME_INTS))
        elif isinstance(value, float):
            new = float(self.rng.choice(EXTREME_FLOATS))
        elif isinstance(value, tuple):
            items = list(value)
            items[int(self.rng.integers(len(items)))] = int(self.rng.choice(EXTREME_INTS))
            new = tuple(items)
        elif isinstance(value, bytes):
            return self.field_bytes(field.name)
        else:
            return self.integer_resealed()
        try:
            return f"{field.name} = {new!r}", dataclasses.replace(sdc, **{field.name: new}).to_bytes()
        except Exception:  # a value the container cannot write: patch the bytes instead
            return self.integer_resealed()

    def field_bytes(self, name: str | None = None) -> tuple[str, bytes]:
        """A bytes field (ids, entropy model parameters, payload) emptied, cut, lengthened or replaced."""
        sdc = self.parsed[self._seed()[0]]
        if name is None:
            names = [f.name for f in dataclasses.fields(sdc) if isinstance(getattr(sdc, f.name), bytes)]
            name = names[int(self.rng.integers(len(names)))]
        value = getattr(sdc, name)
        choice = int(self.rng.integers(6))
        if choice == 0:
            new, what = b"", "emptied"
        elif choice == 1:
            new, what = value[: int(self.rng.integers(len(value) + 1))], "cut"
        elif choice == 2:
            new, what = value + self._random_bytes(int(self.rng.choice([1, 4, 64, 4096]))), "lengthened"
        elif choice == 3:
            new, what = self._random_bytes(len(value)), "random, same length"
        elif choice == 4:
            new, what = b"\xff" * len(value), "all 0xff"
        else:
            new, what = self._random_bytes(int(self.rng.integers(1, 256))), "random"
        try:
            return f"{name} {what}", dataclasses.replace(sdc, **{name: new}).to_bytes()
        except Exception:  # a fixed-size field that cannot take another length
            return self.integer_resealed()

    def insert_or_delete(self) -> tuple[str, bytes]:
        data = self._seed()[1]
        position = int(self.rng.integers(len(data)))
        count = int(self.rng.integers(1, 9))
        if self.rng.random() < 0.5:
            return f"insert {count} bytes at {position}, resealed", reseal(
                data[:position] + self._random_bytes(count) + data[position:])
        return f"delete {count} bytes at {position}, resealed", reseal(data[:position] + data[position + count:])

    def splice(self) -> tuple[str, bytes]:
        first, second = self._seed()[1], self._seed()[1]
        cut = int(self.rng.integers(min(len(first), len(second))))
        return f"splice at {cut}, resealed", reseal(first[:cut] + second[cut:])

    def garbage(self) -> tuple[str, bytes]:
        data = self._seed()[1]
        length = int(self.rng.integers(0, 64))
        prefix = data[: int(self.rng.integers(0, 24))]
        return f"{len(prefix)} header bytes and {length} random ones", reseal(prefix + self._random_bytes(length))


def decode_one(codec: sdlite.Codec, data: bytes, timeout: float) -> tuple[str, str]:
    """(outcome, detail): 'image', 'error' (the package's own, one line) or a failure kind."""

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = codec.decode(data)
        stray = [w for w in caught if not issubclass(w.category, sdlite.SdliteWarning)]
        if stray:  # a user would see it as a second line
            return "warning", f"{stray[0].category.__name__}: {stray[0].message}"
        return "image", f"{image.size[0]}x{image.size[1]}"
    except SdliteError as exc:
        message = str(exc)
        if not message or "\n" in message:
            return "crash", f"SdliteError without a one-line message: {message!r}"
        return "error", message
    except Hang:
        return "hang", f"over {timeout} s"
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_kind(message: str) -> str:
    """An error message with its numbers and quoted parts blanked, to count errors by kind."""
    message = re.sub(r"[0-9a-f]{16}", "ID", message)
    message = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", message)
    return re.sub(r"\([^()]{40,}\)$", "(...)", message)


def make_seeds(codec: sdlite.Codec) -> list[bytes]:
    rng = np.random.default_rng(1)
    seeds = []
    for width, height in SEED_SIZES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels).resize((width, height))
        for quality in SEED_QUALITIES:
            seeds.append(codec.encode(picture, quality=quality))
    flat = Image.new("RGB", (16, 8), (120, 80, 200))  # often single-level channels: a short or empty payload
    seeds.append(codec.encode(flat, quality=0))
    return seeds


class Report:
    def __init__(self):
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.failures: list[tuple[str, str, str, bytes]] = []
        self.slowest = (0.0, "", b"")
        self.by_mutation: Counter[tuple[str, str]] = Counter()

    def add(self, mutation: str, data: bytes, outcome: str, detail: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.by_mutation[(mutation.split(":")[0], outcome)] += 1
        if outcome == "error":
            self.errors[error_kind(detail)] += 1
        elif outcome != "image":
            self.failures.append((mutation, outcome, detail, data))
        if seconds > self.slowest[0]:
            self.slowest = (seconds, mutation, data)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def text(self, elapsed: float) -> str:
        lines = [f"inputs tried: {self.total} in {elapsed:.1f} s ({self.total / max(elapsed, 1e-9):.0f} per second)",
                 "outcomes: " + ", ".join(f"{kind} {count}" for kind, count in self.outcomes.most_common())]
        lines.append("outcomes by mutation:")
        for family in sorted({family for family, _ in self.by_mutation}):
            counts = ", ".join(f"{outcome} {count}" for (name, outcome), count in sorted(self.by_mutation.items())
                               if name == family)
            lines.append(f"  {family:20s} {counts}")
        lines.append("errors by kind:")
        lines += [f"  {count:7d}  {kind}" for kind, count in self.errors.most_common()]
        seconds, mutation, data = self.slowest
        lines.append(f"slowest input: {seconds * 1000:.1f} ms ({mutation}, {len(data)} bytes)")
        lines.append(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        lines.append(f"failures: {len(self.failures)}")
        lines += [f"  {outcome}: {detail} <- {mutation}" for mutation, outcome, detail, _ in self.failures[:20]]
        return "\n".join(lines)


def fuzz(codec: sdlite.Codec, inputs: int, seed: int = 0, timeout: float = 10.0,
         heartbeat: list[float] | None = None, progress: bool = False) -> Report:
    """Decode `inputs` mutated files with `codec`; the report holds every outcome."""
    mutate = Mutator(make_seeds(codec), np.random.default_rng(seed))
    report = Report()
    started = time.perf_counter()
    for count in range(inputs):
        mutation, data = mutate()
        begin = time.perf_counter()
        if heartbeat is not None:
            heartbeat[0] = begin
        outcome, detail = decode_one(codec, data, timeout)
        report.add(mutation, data, outcome, detail, time.perf_counter() - begin)
        if progress and (count + 1) % 10000 == 0:
            print(f"{count + 1} inputs, {time.perf_counter() - started:.0f} s: {dict(report.outcomes)}",
                  file=sys.stderr, flush=True)
    return report


def watchdog(limit: float, heartbeat: list[float]) -> None:
    """Ends the run when one input is stuck where the alarm cannot reach it (inside native code)."""
    def watch():
        while True:
            time.sleep(limit / 4)
            if time.perf_counter() - heartbeat[0] > limit:
                print(f"fuzz: hang: one input ran past {limit} s inside native code", file=sys.stderr, flush=True)
                import os

                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def build_tiny_model(folder: Path) -> Path:
    """A small random VAE, exported with the real `python -m export build` (needs torch)."""
    import subprocess

    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                  norm_num_groups=32).save_pretrained(folder / "vae")
    subprocess.run([sys.executable, "-m", "export", "build", "--model", str(folder / "vae"), "--out",
                    str(folder / "models"), "--name", "tiny"], check=True, capture_output=True)
    return folder / "models" / "tiny"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--model", help="model folder (default: a small random VAE built here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    parser.add_argument("--memory-limit-mb", type=int, default=8192,
                        help="address-space limit, so a runaway allocation fails as a MemoryError")
    parser.add_argument("--save-dir", type=Path, help="write failing inputs and the slowest one here")
    parser.add_argument("--folders", type=int, default=0,
                        help="also this many hostile model folders (see bench/fuzz_models.py)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model) if args.model else build_tiny_model(Path(scratch))
        codec = sdlite.Codec.load(model, max_pixels=FUZZ_MAX_PIXELS, threads=1)
        codec.networks.decoder  # loaded before the memory limit, which is for what the inputs make us allocate
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_limit_mb << 20, resource.RLIM_INFINITY))
        heartbeat = [time.perf_counter()]
        watchdog(3 * args.timeout, heartbeat)
        started = time.perf_counter()
        report = fuzz(codec, args.inputs, args.seed, args.timeout, heartbeat, progress=True)
        elapsed = time.perf_counter() - started
        folder_failures = 0
        if args.folders:
            from .fuzz_models import fuzz_folders

            heartbeat[0] = float("inf")  # each folder has its own alarm
            folder_report, folder_failures = fuzz_folders(model, args.folders, args.seed)
            print(folder_report)
    print(f"fuzz: model {model.name if args.model else 'tiny random VAE'}, seed {args.seed}, "
          f"max pixels {FUZZ_MAX_PIXELS}, timeout {args.timeout} s, address space {args.memory_limit_mb} MB")
    print(report.text(elapsed))
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        (args.save_dir / "slowest.sdc").write_bytes(report.slowest[2])
        for number, (_, _, _, data) in enumerate(report.failures):
            (args.save_dir / f"failure-{number}.sdc").write_bytes(data)
    return 1 if report.failures or folder_failures else 0


if __name__ == "__main__":
    sys.exit(main())
