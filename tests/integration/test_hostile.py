"""The faults an independent attack found (issue 19): model folders reading files outside them, outputs
replacing devices, orphaned workers, unchecked manifest values, and the CLI's odd corners."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdlite
from sdlite import batch, onnxscan
from sdlite.networks import inference
from sdlite.container import SdcFile
from sdlite.files import write_atomic
from sdlite.networks.inference import Graph, cached_graph_path
from sdlite.manifest import Manifest

from conftest import ROOT, run
from pictures import photo
from test_model_folders import edit_manifest, model_copy  # noqa: F401 (a fixture)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

SDLITE = [sys.executable, "-m", "sdlite.cli"]
SECRET = np.arange(16, dtype=np.float32) + 1000


def external(name: str, location: str) -> onnx.TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[16], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        tensor.external_data.add(key=key, value=value)
    return tensor


def model_bytes(nodes, initializers=(), sparse=(), functions=()) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [16])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [16])], list(initializers),
                              sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=list(functions))
    model.ir_version = 8
    return model.SerializeToString()


def reads(location: str) -> dict[str, bytes]:
    """The same file read through external data from each place onnx.proto3 lets a tensor sit."""
    add = [helper.make_node("Add", ["latent", "w"], ["image"])]
    inner = helper.make_graph([helper.make_node("Constant", [], ["image"], value=external("c", location))], "inner",
                              [], [helper.make_tensor_value_info("image", TensorProto.FLOAT, [16])])
    branch = helper.make_node("If", ["flag"], ["image"], then_branch=inner, else_branch=inner)
    flag = helper.make_tensor("flag", TensorProto.BOOL, [], [True])
    function = helper.make_function("local", "F", ["x"], ["y"],
                                    [helper.make_node("Constant", [], ["y"], value=external("f", location))],
                                    [helper.make_opsetid("", 17)])
    sparse = helper.make_sparse_tensor(external("w", location), helper.make_tensor("i", TensorProto.INT64, [16],
                                                                                   list(range(16))), [16])
    return {
        "initializer": model_bytes(add, [external("w", location)]),
        "attribute": model_bytes([helper.make_node("Constant", [], ["image"], value=external("c", location))]),
        "subgraph": model_bytes([branch], [flag]),
        "sparse initializer": model_bytes(add, sparse=[sparse]),
        "function": model_bytes([helper.make_node("F", ["latent"], ["image"], domain="local")], functions=[function]),
    }


def test_the_scanner_knows_onnx_field_numbers():
    fields = {
        onnxscan.MODEL: (onnx.ModelProto, {"graph": onnxscan.GRAPH, "functions": onnxscan.FUNCTION,
                                           "training_info": onnxscan.TRAINING}),
        onnxscan.TRAINING: (onnx.TrainingInfoProto, {"initialization": onnxscan.GRAPH, "algorithm": onnxscan.GRAPH}),
        onnxscan.GRAPH: (onnx.GraphProto, {"node": onnxscan.NODE, "initializer": onnxscan.TENSOR,
                                           "sparse_initializer": onnxscan.SPARSE_TENSOR}),
        onnxscan.NODE: (onnx.NodeProto, {"attribute": onnxscan.ATTRIBUTE}),
        onnxscan.ATTRIBUTE: (onnx.AttributeProto, {"t": onnxscan.TENSOR, "g": onnxscan.GRAPH, "tensors": onnxscan.TENSOR,
                                                   "graphs": onnxscan.GRAPH, "sparse_tensor": onnxscan.SPARSE_TENSOR,
                                                   "sparse_tensors": onnxscan.SPARSE_TENSOR}),
        onnxscan.FUNCTION: (onnx.FunctionProto, {"node": onnxscan.NODE, "attribute_proto": onnxscan.ATTRIBUTE}),
        onnxscan.SPARSE_TENSOR: (onnx.SparseTensorProto, {"values": onnxscan.TENSOR, "indices": onnxscan.TENSOR}),
    }
    for kind, (message, nested) in fields.items():
        assert onnxscan.NESTED[kind] == {message.DESCRIPTOR.fields_by_name[name].number: inner
                                         for name, inner in nested.items()}
    fields = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert (fields["external_data"].number, fields["data_location"].number) == (
        onnxscan.TENSOR_EXTERNAL_DATA, onnxscan.TENSOR_DATA_LOCATION)


@pytest.mark.parametrize("location", ["secret.bin", "sub/secret.bin"])
def test_external_data_anywhere_in_a_graph_is_refused_and_never_read(tmp_path, monkeypatch, location):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for path in (tmp_path / "secret.bin", tmp_path / "sub" / "secret.bin"):
        path.write_bytes(SECRET.tobytes())
    for place, data in reads(location).items():
        with pytest.raises(sdlite.SdliteError, match="external data"):
            Graph(data, "cpu", "latent", "image")
        # Past the scan (were it to miss one), onnxruntime looks in an empty folder of sdlite's own.
        monkeypatch.setattr(inference, "check_self_contained", lambda graph, label: None)
        try:
            output = Graph(data, "cpu", "latent", "image")(np.zeros(16, np.float32))
        except sdlite.SdliteError:
            pass
        else:
            assert not np.isin(SECRET, output).any(), place
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)


def test_a_model_folder_cannot_read_the_working_directory(model_copy, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    data = reads("secret.bin")["initializer"]
    (model_copy / "decoder.onnx").write_bytes(data)
    edit_manifest(model_copy, decoder__sha256=hashlib.sha256(data).hexdigest(), decoder__segments=None,
                  variants=[])
    with pytest.raises(sdlite.SdliteError, match="decoder.onnx: it keeps tensor data in other files"):
        sdlite.Codec.load(model_copy, precision="fp32").networks.decoder
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_cache_is_keyed_by_the_bytes_optimised(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    entry = Manifest.from_json((tiny_model / "manifest.json").read_text()).decoder
    data = (tiny_model / entry.file).read_bytes()
    Graph(data, "cpu", entry.input, entry.output, cache=True)
    other = data + b"\x12\x00"  # an empty name field appended: another graph's bytes, the same graph
    Graph(other, "cpu", entry.input, entry.output, cache=True)
    providers = ["CPUExecutionProvider"]
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {
        cached_graph_path(hashlib.sha256(data).hexdigest(), providers).name,
        cached_graph_path(hashlib.sha256(other).hexdigest(), providers).name}


def test_the_cpu_identity_runs_no_program_from_path(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    fake = tmp_path / "uname"
    fake.write_text(f"#!/bin/sh\necho x > {marker}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    import platform
    # Forget what platform found so far, so that a call of platform.processor() would run `uname -p` now.
    monkeypatch.setattr(platform, "_uname_cache", None, raising=False)
    inference._cpu_identity()
    assert not marker.exists()


# -- outputs -------------------------------------------------------------------------------------


def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    found = {"FIFO": fifo, "directory": tmp_path / "folder"}
    found["directory"].mkdir()
    try:  # root only: a character device like /dev/full's (1, 7), made here so that nothing real is at risk
        os.mknod(tmp_path / "device", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        found["character device"] = tmp_path / "device"
    except PermissionError:
        pass
    return found


def test_outputs_replace_only_regular_files(tmp_path):
    for kind, path in special_files(tmp_path).items():
        before = os.lstat(path).st_mode
        with pytest.raises(sdlite.SdliteError, match=f"is a {kind}: sdlite only replaces regular files"):
            write_atomic(path, b"data")
        assert os.lstat(path).st_mode == before
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "fifo")
    with pytest.raises(sdlite.SdliteError, match="is a FIFO"):
        write_atomic(link, b"data")
    regular = tmp_path / "regular"
    regular.write_bytes(b"old")
    write_atomic(regular, b"new")
    assert regular.read_bytes() == b"new"


def test_force_onto_a_device_or_fifo_is_one_clear_error(tmp_path, tiny_model):
    photo(16, 16).save(tmp_path / "in.png")
    for kind, path in special_files(tmp_path).items():
        if kind == "directory":
            continue
        result = run(*SDLITE, "encode", str(tmp_path / "in.png"), "-o", str(path), "--force", "-m", str(tiny_model))
        assert result.returncode == 1
        assert result.stderr.decode().strip().endswith(f"{path} is a {kind}: sdlite only replaces regular files")
        assert not stat.S_ISREG(os.lstat(path).st_mode)


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def sdc_file(tmp_path, tiny_model) -> Path:
    path = tmp_path / "in.sdc"
    path.write_bytes(sdlite.Codec.load(tiny_model).encode(photo(16, 16)))
    return path


def shell(command: str, tiny_model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, cwd=ROOT,
                          env={**os.environ, "SDLITE_MODELS_DIR": str(tiny_model.parent),
                               "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("redirect, reason", [(">&-", "it is closed"), ("> /dev/full", "No space left on device")])
def test_stdout_closed_or_full_is_one_clear_error(sdc_file, tiny_model, redirect, reason):
    command = f"{sys.executable} -m sdlite.cli decode {sdc_file} -o - -m {tiny_model} {redirect}"
    result = shell(command, tiny_model)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"sdlite: error: {sdc_file}: cannot write to stdout: {reason}"


@pytest.mark.parametrize("command", ["info {sdc}", "models"])
def test_listings_onto_a_full_stdout_are_one_clear_error(sdc_file, tiny_model, command):
    result = shell(f"{sys.executable} -m sdlite.cli {command.format(sdc=sdc_file)} > /dev/full", tiny_model)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "sdlite: error: cannot write to stdout: No space left on device"


@pytest.mark.parametrize("signum, status, said", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_signal_gives_its_own_exit_status(tmp_path, tiny_model, signum, status, said):
    # decode from stdin blocks on a pipe that is never written to: the signal always finds it running
    process = subprocess.Popen([*SDLITE, "decode", "-", "-o", str(tmp_path / "out.png"), "-m", str(tiny_model)],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    # Once it waits on the pipe it is past the imports and main() has its handlers (a signal before that
    # would end Python itself, with another status).
    while "pipe_read" not in Path(f"/proc/{process.pid}/wchan").read_text():
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate()
    process.stdin.close()
    assert process.returncode == status
    assert stderr.decode().strip() == f"sdlite: {said}"


def test_a_cut_block_is_named_in_good_grammar():
    header, filler = 33, bytes(12)  # past the smallest file's size, short of the 100 bytes claimed
    start = SdcFile(b"\0" * 8, 8, 8, (4, 1, 1), 1.0, 50, b"\x01\x02\x03", b"").to_bytes()[:header]
    with pytest.raises(sdlite.SdliteError, match="the entropy model parameters are cut short"):
        SdcFile.from_bytes(start + (100).to_bytes(4, "little") + filler)
    with pytest.raises(sdlite.SdliteError, match="the payload is cut short"):
        SdcFile.from_bytes(start + (0).to_bytes(4, "little") + (100).to_bytes(4, "little") + filler)


def test_a_file_whose_payload_is_short_by_two_words_says_so(tiny_model):
    codec = sdlite.Codec.load(tiny_model)
    sdc = SdcFile.from_bytes(codec.encode(photo(32, 32), quality=90, method="uniform"))
    short = SdcFile(sdc.latent_space_id, sdc.width, sdc.height, sdc.latent_shape, sdc.step, sdc.quality,
                    sdc.model_params, sdc.payload[:-8], sdc.method)
    with pytest.raises(sdlite.SdliteError, match="the payload is cut short"):
        codec.decode(short.to_bytes())


def test_a_float_image_in_0_to_1_is_scaled_not_black(tmp_path):
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    picture = sdlite.images.open_image(tmp_path / "float.tif")
    assert np.asarray(picture).mean() == pytest.approx(127.5, abs=1)
    Image.fromarray(values * 3 - 1, "F").save(tmp_path / "negative.tif")
    with pytest.raises(sdlite.SdliteError, match=r"values in \[0, 1\] or \[0, 255\]"):
        sdlite.images.open_image(tmp_path / "negative.tif")


def test_decode_takes_a_path(sdc_file, tiny_model):
    codec = sdlite.Codec.load(tiny_model)
    from_path = codec.decode(sdc_file)
    assert np.array_equal(np.asarray(from_path), np.asarray(codec.decode(sdc_file.read_bytes())))
    assert np.array_equal(np.asarray(codec.decode(str(sdc_file))), np.asarray(from_path))


# -- workers ---------------------------------------------------------------------------------------


def test_workers_ask_to_die_with_their_parent():
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, initializer=batch.die_with_parent, initargs=(os.getpid(),)) as pool:
        assert pool.submit(death_signal).result() == signal.SIGTERM


def death_signal() -> int:
    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value


def test_workers_of_a_killed_run_exit(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from sdlite import batch

        class Codec:
            def copy(self, **changes):
                return self

        def work(codec, source, target):
            print(os.getpid(), flush=True)
            time.sleep(3600)

        for outcome in batch.run_all(Codec(), work, [("a", "b"), ("c", "d")], jobs=2):
            pass
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    workers = [int(parent.stdout.readline()) for _ in range(2)]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 300  # they go at once; only a broken build would wait this long
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in workers):
        time.sleep(0.1)


# -- manifests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("decoder__memory", [float("nan")] * 3), ("decoder__memory", 1), ("decoder__memory", ["a", "b", "c"]),
    ("latent_space", "\ud800"), ("latent_channels", True), ("scaling_factor", "1"), ("decoder__sha256", 5),
    ("decoder__seconds", -1), ("channel_sensitivity", [1.0]), ("decoder__input", []), ("unknown", 1),
    ("variants", [{"precision": "int8", "devices": 3, "encoder": {}, "decoder": {}, "psnr_db": {}}]),
])
def test_every_manifest_value_is_checked_at_load(tiny_model, key, value):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    target = manifest
    *parents, last = key.split("__")
    for parent in parents:
        target = target[parent]
    target[last] = value
    with pytest.raises(sdlite.SdliteError, match="^invalid model manifest: "):
        Manifest.from_json(json.dumps(manifest))


@pytest.mark.parametrize("field, value", [("psnr_db", "40"), ("psnr_db", None), ("devices", 3),
                                          ("psnr_db", {"encoder": 40.0})])
def test_a_variants_values_are_checked(tiny_model, field, value):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    decoder = manifest["decoder"]
    manifest["variants"] = [{"precision": "int8", "devices": ["cpu"], "encoder": manifest["encoder"],
                             "decoder": decoder, "psnr_db": {"encoder": 40.0, "decoder": 40.0}, field: value}]
    with pytest.raises(sdlite.SdliteError, match="^invalid model manifest: variants.0"):
        Manifest.from_json(json.dumps(manifest))


def test_a_segments_groups_are_bounded(tiny_model):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    segmented = manifest["decoder"]["segments"]
    if segmented is None:
        pytest.skip("this model's decoder is not cut into segments")
    norm = next(segment for segment in segmented["segments"] if segment["normalised"])
    norm["groups"] = 10**9
    with pytest.raises(sdlite.SdliteError, match="groups: Input should be less than or equal to 65535"):
        Manifest.from_json(json.dumps(manifest))


def test_a_broken_model_is_reported_for_itself_only(tiny_model, tmp_path, sdc_file):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "good")
    shutil.copytree(tiny_model, models / "broken")
    edit_manifest(models / "broken", latent_space="\ud800", decoder__memory=[float("nan")] * 3)
    env = {"SDLITE_MODELS_DIR": str(models)}
    listed = run(*SDLITE, "models", env=env)
    assert listed.returncode == 0
    lines = listed.stdout.decode().splitlines()
    assert lines[0].startswith("broken: invalid model manifest: ")
    assert lines[1].startswith("good: latent space ")
    info = run(*SDLITE, "info", str(sdc_file), env=env)
    assert info.returncode == 0 and "(model good)" in info.stdout.decode()
    decoded = run(*SDLITE, "decode", str(sdc_file), "-o", str(tmp_path / "out.png"), env=env)
    assert decoded.returncode == 0, decoded.stderr.decode()


def test_a_graph_name_too_long_for_the_file_system_is_one_clear_error(model_copy):  # noqa: F811
    edit_manifest(model_copy, decoder__file="x" * 5000)
    with pytest.raises(sdlite.SdliteError, match="graph path 'x+' is invalid"):
        sdlite.Codec.load(model_copy, precision="fp32").networks.decoder
