"""The `sdlite` command as a user runs it: files, stdin/stdout, batches, and one-line errors."""

from __future__ import annotations

import shutil
import sys

import pytest
from PIL import Image

from conftest import run
from pictures import photo

SDLITE = [sys.executable, "-m", "sdlite.cli"]


@pytest.fixture(scope="module")
def models_env(tiny_model):
    return {"SDLITE_MODELS_DIR": str(tiny_model.parent)}


def sdlite(*args, env=None, input=None, cwd=None):
    return run(*SDLITE, *args, env=env, input=input, **({"cwd": cwd} if cwd else {}))


def assert_one_line_error(result, pattern: str = ""):
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("sdlite: error:")]
    assert len(errors) == 1, stderr
    assert pattern in errors[0]


def test_encode_info_decode_with_default_names(tmp_path, models_env):
    photo(97, 61).save(tmp_path / "photo.png")
    assert sdlite("encode", str(tmp_path / "photo.png"), "-q", "60", env=models_env).returncode == 0
    info = sdlite("info", str(tmp_path / "photo.sdc"), env=models_env)
    assert info.returncode == 0
    assert "97x61" in info.stdout.decode() and "quality        60" in info.stdout.decode()
    (tmp_path / "photo.png").unlink()
    assert sdlite("decode", str(tmp_path / "photo.sdc"), env=models_env).returncode == 0
    assert Image.open(tmp_path / "photo.png").size == (97, 61)


def test_stdin_to_stdout_and_back(tmp_path, models_env):
    photo(20, 12).save(tmp_path / "in.png")
    encoded = sdlite("encode", "-", input=(tmp_path / "in.png").read_bytes(), env=models_env)
    assert encoded.returncode == 0 and encoded.stdout[:4] == b"\x89SDC"
    decoded = sdlite("decode", "-", "-o", "-", input=encoded.stdout, env=models_env)
    assert decoded.returncode == 0 and decoded.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_format_follows_the_suffix(tmp_path, models_env):
    photo(20, 12).save(tmp_path / "in.png")
    sdlite("encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.sdc"), env=models_env)
    assert sdlite("decode", str(tmp_path / "x.sdc"), "-o", str(tmp_path / "x.webp"), env=models_env).returncode == 0
    assert Image.open(tmp_path / "x.webp").format == "WEBP"
    assert_one_line_error(sdlite("decode", str(tmp_path / "x.sdc"), "-o", str(tmp_path / "x.nope"), env=models_env),
                          "unknown image format")
    assert not (tmp_path / "x.nope").exists()


def test_several_inputs_go_to_a_directory_and_one_bad_file_does_not_stop_the_rest(tmp_path, models_env):
    for name in ("a", "b"):
        photo(24, 16).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    result = sdlite("encode", *(str(tmp_path / n) for n in ("a.png", "bad.png", "b.png")), "-o", f"{out}/",
                    env=models_env)
    assert result.returncode == 1
    assert "bad.png: not an image file" in result.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["a.sdc", "b.sdc"]
    decoded = sdlite("decode", str(out / "a.sdc"), str(out / "b.sdc"), "-o", str(out), env=models_env)
    assert decoded.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a.sdc", "b.png", "b.sdc"]


def test_alpha_dropped_is_reported(tmp_path, models_env):
    photo(16, 16).convert("RGBA").save(tmp_path / "alpha.png")
    result = sdlite("encode", str(tmp_path / "alpha.png"), env=models_env)
    assert result.returncode == 0 and "alpha channel dropped" in result.stderr.decode()


def test_errors_are_one_line_and_leave_no_file(tmp_path, models_env, tiny_model, other_model):
    photo(16, 16).save(tmp_path / "p.png")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(sdlite("encode", str(tmp_path / "missing.png"), env=models_env), "No such file")
    assert_one_line_error(sdlite("encode", str(tmp_path / "notes.txt"), env=models_env), "not an image")
    assert_one_line_error(sdlite("decode", str(tmp_path / "notes.txt"), env=models_env), "not an .sdc file")
    assert_one_line_error(sdlite("encode", str(tmp_path / "p.png"), "--model", "nonesuch", env=models_env),
                          "not found")
    assert_one_line_error(sdlite("encode", str(tmp_path / "p.png"), "--device", "tpu", env=models_env),
                          "unknown device")
    assert_one_line_error(sdlite("encode", str(tmp_path / "p.png"), "-o", str(tmp_path / "p.png"), env=models_env),
                          "overwrite the input")
    foreign = tmp_path / "foreign.sdc"
    sdlite("encode", str(tmp_path / "p.png"), "-o", str(foreign), "--model", str(other_model))
    assert_one_line_error(sdlite("decode", str(foreign), "--model", str(tiny_model)), "another latent space")
    truncated = tmp_path / "truncated.sdc"
    truncated.write_bytes(foreign.read_bytes()[:-7])
    assert_one_line_error(sdlite("decode", str(truncated), env=models_env), "truncated")
    assert_one_line_error(sdlite("info", str(truncated), env=models_env), "truncated")
    leftovers = {p.name for p in tmp_path.iterdir()} - {"p.png", "notes.txt", "foreign.sdc", "truncated.sdc"}
    assert leftovers == set()


def test_quality_out_of_range_is_a_usage_error(tmp_path, models_env):
    photo(16, 16).save(tmp_path / "p.png")
    result = sdlite("encode", str(tmp_path / "p.png"), "-q", "101", env=models_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr.decode()


def test_cuda_asked_for_without_cuda_says_so(tmp_path, models_env):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the missing-CUDA message cannot be shown")
    photo(16, 16).save(tmp_path / "p.png")
    assert_one_line_error(sdlite("encode", str(tmp_path / "p.png"), "--device", "cuda", env=models_env), "CUDA")


def test_model_choice_by_name_and_by_the_files_latent_space(tmp_path, tiny_model, other_model):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_model, models / "tiny")
    shutil.copytree(other_model, models / "other")
    env = {"SDLITE_MODELS_DIR": str(models)}
    photo(16, 16).save(tmp_path / "p.png")
    assert_one_line_error(sdlite("encode", str(tmp_path / "p.png"), env=env), "several models")
    assert sdlite("encode", str(tmp_path / "p.png"), "--model", "other", env=env).returncode == 0
    # Decoding needs no --model: the file's latent space picks the one model that can read it.
    assert sdlite("decode", str(tmp_path / "p.sdc"), "-o", str(tmp_path / "q.png"), env=env).returncode == 0
    listing = sdlite("models", env=env).stdout.decode()
    assert "tiny:" in listing and "other:" in listing


# -- -o: files and folders ---------------------------------------------------------------------------

def test_a_trailing_slash_makes_o_a_folder_for_one_input(tmp_path, models_env):
    photo(24, 16).save(tmp_path / "one.png")
    result = sdlite("encode", str(tmp_path / "one.png"), "-o", f"{tmp_path / 'newdir'}/", env=models_env)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "newdir" / "one.sdc").is_file()
    result = sdlite("decode", str(tmp_path / "newdir" / "one.sdc"), "-o", f"{tmp_path / 'decdir'}/", env=models_env)
    assert result.returncode == 0, result.stderr.decode()
    assert Image.open(tmp_path / "decdir" / "one.png").size == (24, 16)


def test_several_inputs_need_a_folder(tmp_path, models_env):
    for name in ("a", "b"):
        photo(24, 16).save(tmp_path / f"{name}.png")
    inputs = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    result = sdlite("encode", *inputs, "-o", str(tmp_path / "single.sdc"), env=models_env)
    assert result.returncode == 2
    assert_one_line_error(result, "2 inputs need a folder")
    assert not (tmp_path / "single.sdc").exists()
    (tmp_path / "existing.sdc").write_bytes(b"x")
    result = sdlite("encode", *inputs, "-o", str(tmp_path / "existing.sdc"), env=models_env)
    assert result.returncode == 2 and "internal error" not in result.stderr.decode()
    assert_one_line_error(result, "is a file")
    assert (tmp_path / "existing.sdc").read_bytes() == b"x"


def test_the_output_format_is_checked_before_any_work(tmp_path):
    """With no model installed and an input that is not an .sdc file, the format is still what is refused."""
    (tmp_path / "notes.txt").write_text("hello")
    result = sdlite("decode", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "out.xyz"),
                    env={"SDLITE_MODELS_DIR": str(tmp_path / "no-models")})
    assert result.returncode == 2
    assert_one_line_error(result, "unknown image format '.xyz'")


# -- what a run prints -------------------------------------------------------------------------------

def test_one_file_prints_a_summary_and_quiet_silences_it(tmp_path, models_env):
    photo(64, 48).save(tmp_path / "p.png")
    result = sdlite("encode", str(tmp_path / "p.png"), "--psnr", env=models_env)
    size = (tmp_path / "p.sdc").stat().st_size
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 0 and len(lines) == 1, lines
    assert f"64x48, {size:,} bytes, {8 * size / (64 * 48):.3f} bpp, PSNR " in lines[0] and lines[0].endswith(" dB")
    result = sdlite("decode", str(tmp_path / "p.sdc"), "-o", str(tmp_path / "back.png"), env=models_env)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 0 and len(lines) == 1, lines
    assert f"{size:,} bytes" in lines[0] and f"image {(tmp_path / 'back.png').stat().st_size:,} bytes" in lines[0]
    for command in (["encode", str(tmp_path / "p.png"), "-o", str(tmp_path / "q.sdc")],
                    ["decode", str(tmp_path / "p.sdc"), "-o", str(tmp_path / "q.png")]):
        result = sdlite(*command, "--quiet", env=models_env)
        assert result.returncode == 0 and result.stderr == b""


def test_the_summary_psnr_is_the_round_trips(tmp_path, models_env, tiny_model):
    import sdlite as api
    from pictures import psnr

    photo(64, 48).save(tmp_path / "p.png")
    result = sdlite("encode", str(tmp_path / "p.png"), "--psnr", env=models_env)
    decoded = api.Codec.load(tiny_model).decode((tmp_path / "p.sdc").read_bytes())
    assert f"PSNR {psnr(decoded, Image.open(tmp_path / 'p.png')):.2f} dB" in result.stderr.decode()
    assert "PSNR" not in sdlite("encode", str(tmp_path / "p.png"), "-f", "--no-psnr", env=models_env).stderr.decode()


# -- usage errors and help -----------------------------------------------------------------------------

@pytest.mark.parametrize("arguments", [["--qualty", "3"], ["-q", "150"], ["--output-quality", "5"]])
def test_usage_errors_are_one_line_with_status_2(tmp_path, models_env, arguments):
    result = sdlite("encode", str(tmp_path / "p.png"), *arguments, env=models_env)
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and result.stderr.startswith(b"sdlite: error: "), result.stderr


def test_help_shows_plain_metavars_and_only_precisions_that_work(models_env):
    for command in ("encode", "decode", "info"):
        text = sdlite(command, "--help", env=models_env).stdout.decode()
        assert "Usage: sdlite " in text
        for noise in ("<bool>", "<list", "{", "<int", "<str>", "<float>"):
            assert noise not in text, (command, noise)
    assert "fp32|int8|fp16|auto" in sdlite("encode", "--help").stdout.decode()
    assert "bf16" not in sdlite("decode", "--help").stdout.decode()


def test_binary_output_is_not_written_to_a_terminal(tmp_path, models_env):
    import os
    import pty
    import subprocess

    photo(16, 16).save(tmp_path / "p.png")
    controller, terminal = pty.openpty()
    try:
        with open(tmp_path / "p.png", "rb") as stdin:
            result = subprocess.run([*SDLITE, "encode", "-"], stdin=stdin, stdout=terminal, stderr=subprocess.PIPE,
                                    env={**os.environ, **models_env}, cwd=tmp_path)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("sdlite: error: will not write binary data to a terminal")


def test_decode_sets_the_quality_of_a_lossy_output(tmp_path, models_env):
    photo(64, 48).save(tmp_path / "p.png")
    sdlite("encode", str(tmp_path / "p.png"), env=models_env)
    sizes = {}
    for quality in ("10", "95"):
        target = tmp_path / f"q{quality}.jpg"
        assert sdlite("decode", str(tmp_path / "p.sdc"), "-o", str(target), "--output-quality", quality,
                      env=models_env).returncode == 0
        sizes[quality] = target.stat().st_size
    assert sizes["10"] < sizes["95"]
    result = sdlite("decode", str(tmp_path / "p.sdc"), "-o", str(tmp_path / "x.png"), "--output-quality", "50",
                    env=models_env)
    assert result.returncode == 2
    assert_one_line_error(result, "--output-quality applies to JPEG, WebP, AVIF outputs, not PNG")
    assert not (tmp_path / "x.png").exists()


def test_the_models_folder_is_looked_for_in_the_current_folder(tmp_path, tiny_model):
    """Where scripts/demo.sh installs its model: models/ of the folder sdlite runs in."""
    shutil.copytree(tiny_model, tmp_path / "models" / "demo")
    photo(16, 16).save(tmp_path / "p.png")
    env = {"SDLITE_MODELS_DIR": ""}
    assert sdlite("encode", "p.png", env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "p.sdc").is_file()
    result = sdlite("encode", "p.png", env=env, cwd=tmp_path / "models")
    assert_one_line_error(result, f"no model installed in {tmp_path / 'models' / 'models'}")
