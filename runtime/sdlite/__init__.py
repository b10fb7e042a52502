"""sdlite: a learned image codec on the Stable Diffusion VAE, run with onnxruntime (no torch)."""

from importlib.metadata import PackageNotFoundError, version

from .codec import DEFAULT_QUALITY, Codec
from .container import SdcFile
from .errors import SdliteError, SdliteWarning
from .manifest import Manifest

try:
    __version__ = version("sdlite")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Codec",
    "DEFAULT_QUALITY",
    "Manifest",
    "SdcFile",
    "SdliteError",
    "SdliteWarning",
    "__version__",
]
