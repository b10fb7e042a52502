"""The runtime must import where torch, diffusers and the exporter cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Every module of the package, subpackages included, in a fresh interpreter (this one may hold torch
# already) where importing torch, diffusers or export raises.
IMPORT_EVERY_MODULE = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "export"):
                raise ImportError(f"{name} is made unimportable for this test")

    sys.meta_path.insert(0, Refuse())
    import sdlite
    # _rangedecode is the C library that rangedecode.py loads with ctypes, not a Python module
    names = [module.name for module in pkgutil.walk_packages(sdlite.__path__, "sdlite.")
             if module.name != "sdlite._rangedecode"]
    for name in names:
        importlib.import_module(name)
    print(len(names))
""")


def test_no_runtime_module_imports_torch_diffusers_or_the_exporter():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 20  # the subpackages' modules were found, not only the top level's
