"""What every coding method is to the codec: a quantizer and entropy coder of the latent, bound to one
model, with its parameters serialised in the file's model block."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..errors import SdliteError
from ..manifest import Manifest

# a graph of the model by role (a method's own graphs: "analysis", "synthesis", ...): array in, array out
RunGraph = Callable[[str, np.ndarray], np.ndarray]
# latent -> (the latent the decoder will see, the levels coded): what the encoder's effort searches through
Quantize = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Coded:
    """A latent as a method codes it: the container's step field, the model block and the payload."""

    step: float
    model_block: bytes
    payload: bytes


@dataclass(frozen=True)
class ModelParts:
    """What a method may use of the model it codes for."""

    manifest: Manifest
    folder: Path
    run_graph: RunGraph
    read_verified: Callable[[object], bytes]  # a manifest entry's file, checked against its sha256


@dataclass(frozen=True)
class EffortSearch:
    """What the encoder's effort searches for one latent at one quality. The variable starts at `start`
    (a latent, or a method's own code); `quantize` gives what the gradient graph `gradient` takes and
    the levels coded; `steps` is each channel's level step in the variable's units; one cell of the
    variable covers `cell_latent_cells` latent cells a side; `encode` codes a variable."""

    start: np.ndarray
    quantize: Quantize
    steps: np.ndarray
    gradient: str  # "decoder_vjp", or a method's own gradient graph
    cell_latent_cells: int
    encode: Callable[[np.ndarray], Coded]


class Method(ABC):
    """One coding method for one model. `id` is the value of the .sdc header's method byte."""

    id: ClassVar[int]
    name: ClassVar[str]
    description: ClassVar[str]
    supports_effort = False  # a class's default; a method may know only once bound to its model

    def __init__(self, model: ModelParts):
        self.model = model

    @classmethod
    def available_for(cls, manifest: Manifest) -> bool:
        """Whether a model can code with this method (a learned method needs its trained parts)."""
        return True

    @abstractmethod
    def encode(self, latent: np.ndarray, quality: float) -> Coded:
        """A latent (C, H, W) at a quality in [0, 100] (fractions allowed)."""

    @abstractmethod
    def decode(self, model_block: bytes, payload: bytes, shape: tuple[int, int, int], step: float) -> np.ndarray:
        """The latent (C, H, W) of `shape` that a file's model block and payload stand for."""

    def effort_search(self, latent: np.ndarray, quality: float) -> EffortSearch:
        raise SdliteError(f"encoder effort is not available with the {self.name} method")


def finite(latent: np.ndarray, step: float) -> np.ndarray:
    if not np.isfinite(latent).all():
        raise SdliteError(f"corrupt .sdc file: the quantizer step {step:g} overflows the latent")
    return latent
