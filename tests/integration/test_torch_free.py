"""The runtime must work where torch and diffusers cannot even be imported."""

from __future__ import annotations

import sys
import textwrap

from conftest import run

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers"):
                raise ImportError(f"{name} is made unimportable for this test")

    sys.meta_path.insert(0, NoTorch())
""")


def test_api_round_trip_without_torch(tiny_model, tmp_path):
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import sdlite
        from PIL import Image
        codec = sdlite.Codec.load({str(tiny_model)!r})
        data = codec.encode(Image.new("RGB", (37, 21), (200, 120, 40)), quality=40)
        assert codec.decode(data).size == (37, 21)
        assert not any(m.split(".")[0] in ("torch", "diffusers") for m in sys.modules)
        print("ok")
    """)
    result = run(sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "ok"


def test_cli_round_trip_without_torch(tiny_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (30, 20), (10, 200, 90)).save(tmp_path / "p.png")
    cli = BLOCK_TORCH + "from sdlite.cli import main\nmain()\n"
    for args in (["encode", str(tmp_path / "p.png"), "--model", str(tiny_model)],
                 ["decode", str(tmp_path / "p.sdc"), "-o", str(tmp_path / "q.png"), "--model", str(tiny_model)],
                 ["info", str(tmp_path / "p.sdc")]):
        result = run(sys.executable, "-c", cli, *args)
        assert result.returncode == 0, result.stderr.decode()
    assert Image.open(tmp_path / "q.png").size == (30, 20)


