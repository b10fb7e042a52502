"""Nothing lost: existing files are kept without --force, inputs are never overwritten, and an
interrupted batch leaves only complete files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import sdlite
from sdlite.files import write_atomic

from conftest import ROOT, run
from pictures import photo

SDLITE = [sys.executable, "-m", "sdlite.cli"]


def sdlite_cli(*args, model):
    return run(*SDLITE, *args, "--model", str(model))


def one_error_line(result) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("sdlite: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_an_existing_output_is_kept_without_force_and_replaced_with_it(tmp_path, tiny_model):
    photo(24, 16).save(tmp_path / "p.png")
    target = tmp_path / "p.sdc"
    target.write_bytes(b"precious")
    assert "already exists (use --force" in one_error_line(sdlite_cli("encode", str(tmp_path / "p.png"), model=tiny_model))
    assert target.read_bytes() == b"precious"
    assert sdlite_cli("encode", str(tmp_path / "p.png"), "--force", model=tiny_model).returncode == 0
    assert sdlite.SdcFile.from_bytes(target.read_bytes()).width == 24
    (tmp_path / "p.png").write_bytes(b"precious too")
    assert "already exists" in one_error_line(sdlite_cli("decode", str(target), model=tiny_model))
    assert (tmp_path / "p.png").read_bytes() == b"precious too"
    assert sdlite_cli("decode", str(target), "-f", model=tiny_model).returncode == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_batch_skips_existing_outputs_and_writes_the_rest(tmp_path, tiny_model):
    for name in ("a", "b", "c"):
        photo(16, 16, seed=ord(name)).save(tmp_path / f"{name}.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.sdc").write_bytes(b"keep me")
    result = sdlite_cli("encode", *(str(tmp_path / f"{n}.png") for n in "abc"), "-o", str(tmp_path / "out"),
                        model=tiny_model)
    assert "b.png: " in one_error_line(result) and "already exists" in one_error_line(result)
    assert (tmp_path / "out" / "b.sdc").read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.sdc", "b.sdc", "c.sdc"]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_the_input_is_never_overwritten_even_through_a_link_or_with_force(tmp_path, tiny_model, link):
    photo(16, 16).save(tmp_path / "p.png")
    original = (tmp_path / "p.png").read_bytes()
    (os.link if link == "hard" else os.symlink)(tmp_path / "p.png", tmp_path / "alias.sdc")
    result = sdlite_cli("encode", str(tmp_path / "p.png"), "-o", str(tmp_path / "alias.sdc"), "--force",
                        model=tiny_model)
    assert "overwrite the input" in one_error_line(result)
    assert (tmp_path / "p.png").read_bytes() == original


def test_write_atomic_without_replace_never_clobbers_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    write_atomic(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"second", replace=False)
    write_atomic(target, b"third")
    assert target.read_bytes() == b"third" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_batch_leaves_only_complete_files(tmp_path, tiny_model, signum):
    inputs = []
    for number in range(40):
        photo(96, 64, seed=number).save(tmp_path / f"{number:02d}.png")
        inputs.append(str(tmp_path / f"{number:02d}.png"))
    out = tmp_path / "out"
    process = subprocess.Popen([*SDLITE, "encode", *inputs, "-o", f"{out}/", "--model", str(tiny_model)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (out.is_dir() and len(list(out.glob("*.sdc"))) >= 3) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate()
    assert process.returncode in (130, 143) and b"Traceback" not in stderr, stderr.decode()
    written = sorted(out.iterdir())
    assert 3 <= len(written) < 40
    for path in written:
        assert path.suffix == ".sdc", path.name  # no temporary file left behind
        sdlite.SdcFile.from_bytes(path.read_bytes())  # complete: its checksum holds
