"""Model folders come from strangers too: manifests, graph paths, graph bytes and export checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest

import sdlite
from sdlite.manifest import MANIFEST_MAX_BYTES

from conftest import export_command, run
from pictures import photo


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    copy = tmp_path / "models" / "copy"
    shutil.copytree(tiny_model, copy)
    return copy


def edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        target = manifest
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_tampered_encoder_is_refused_before_it_runs(model_copy):
    with open(model_copy / "encoder.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(sdlite.SdliteError, match="encoder.onnx does not match the sha256 in its manifest"):
        sdlite.Codec.load(model_copy, precision="fp32").encode(photo(8, 8))


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_graph_paths_cannot_leave_the_model_folder(model_copy, where):
    # The file outside is the genuine decoder with the right sha256: only the path check can refuse it.
    outside = model_copy.parent / "outside.onnx"
    shutil.copy(model_copy / "decoder.onnx", outside)
    if where == "symlink":
        (model_copy / "decoder.onnx").unlink()
        os.symlink(outside, model_copy / "decoder.onnx")
        path = "decoder.onnx"
    else:
        path = "../outside.onnx" if where == "parent" else str(outside.resolve())
    edit_manifest(model_copy, decoder__file=path)
    codec = sdlite.Codec.load(model_copy, precision="fp32")
    with pytest.raises(sdlite.SdliteError, match="points outside the model folder"):
        codec.decode(codec.encode(photo(8, 8)))


def test_a_graph_that_references_external_data_cannot_read_other_files(model_copy, tmp_path):
    from onnx import TensorProto, helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 64)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[16], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", str(secret)), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["latent", "w"], ["image"])], "g",
                              [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [16])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [16])], [weight])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    (model_copy / "decoder.onnx").write_bytes(data)
    edit_manifest(model_copy, decoder__sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(sdlite.SdliteError, match="cannot load .*decoder.onnx"):
        sdlite.Codec.load(model_copy, precision="fp32").networks.decoder


HOSTILE_MANIFESTS = {
    "a list": b"[]",
    "a number": b"1",
    "not UTF-8": b"\xff\xfe{",
    "too large": b" " * (MANIFEST_MAX_BYTES + 1),
    "deeply nested": b"[" * 200_000 + b"]" * 200_000,
    "truncated JSON": b'{"format": "sdlite-model", ',
}
HOSTILE_VALUES = {
    "channels as text": {"latent_channels": "4"},
    "channels as true": {"latent_channels": True},
    "zero channels": {"latent_channels": 0},
    "a billion channels": {"latent_channels": 10**9},
    "fractional factor": {"downsampling_factor": 7.5},
    "huge factor": {"downsampling_factor": 2**40},
    "scaling not a number": {"scaling_factor": float("nan")},
    "scaling as text": {"scaling_factor": "0.18"},
    "no decoder": {"decoder": None},
    "graph file a number": {"decoder__file": 3},
    "short sha256": {"decoder__sha256": "abc"},
    "NUL in the path": {"decoder__file": "decoder\x00.onnx"},
    "unknown key": {"run_this": "rm -rf /"},
    "segments as text": {"decoder__segments": "decoder.segment0.onnx"},
    "no segments": {"decoder__segments": {"segments": [], "held_bytes_per_cell": 1}},
}


@pytest.mark.parametrize("name", list(HOSTILE_MANIFESTS) + list(HOSTILE_VALUES))
def test_hostile_manifests_are_refused_in_one_line(model_copy, name):
    if name in HOSTILE_MANIFESTS:
        (model_copy / "manifest.json").write_bytes(HOSTILE_MANIFESTS[name])
    else:
        edit_manifest(model_copy, **HOSTILE_VALUES[name])
    with pytest.raises(sdlite.SdliteError) as refused:
        codec = sdlite.Codec.load(model_copy, precision="fp32")
        codec.decode(codec.encode(photo(8, 8)))
    assert "\n" not in str(refused.value) and ("manifest" in str(refused.value) or "graph path" in str(refused.value))
    listing = run(sys.executable, "-m", "sdlite.cli", "models", env={"SDLITE_MODELS_DIR": str(model_copy.parent)})
    assert listing.returncode == 0 and "Traceback" not in listing.stderr.decode()
    assert listing.stdout.decode().startswith("copy: ")


class Payload:
    """Pickled, it would create a file when unpickled: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_the_export_never_unpickles_code_from_a_checkpoint(tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"encoder.conv_in.weight": Payload(marker)}}, tmp_path / "evil.ckpt")
    (tmp_path / "evil-legacy.pt").write_bytes(pickle.dumps({"x": Payload(marker)}))
    for half in ("encoder", "decoder"):  # a tiny autoencoder's pair of weights files
        torch.save({"0.weight": Payload(marker)}, tmp_path / f"evil_{half}.pth")
    for name in ("evil.ckpt", "evil-legacy.pt", "evil_encoder.pth"):
        status, stderr = export_command("build", "--model", str(tmp_path / name), "--out", str(tmp_path / "out"))
        assert status == 1 and "cannot read weights" in stderr, stderr
        assert not marker.exists()


def test_the_export_never_unpickles_a_diffusers_folder_without_safetensors(tiny_vae_folder, tmp_path):
    import torch

    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(tiny_vae_folder / "config.json", folder / "config.json")
    marker = tmp_path / "code-ran"
    torch.save({"encoder.conv_in.weight": Payload(marker)}, folder / "diffusion_pytorch_model.bin")
    status, stderr = export_command("build", "--model", str(folder), "--out", str(tmp_path / "out"))
    assert status == 1 and "cannot load" in stderr, stderr
    assert not marker.exists()
