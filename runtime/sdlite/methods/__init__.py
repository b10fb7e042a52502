"""The coding methods, by the id that the .sdc header's method byte carries (each class's `id`)."""

from __future__ import annotations

from ..errors import SdliteError
from .base import Coded, EffortSearch, Method, ModelParts
from .learned import Learned
from .palette import Palette
from .predictive import Predictive
from .uniform import Uniform

METHODS: dict[int, type[Method]] = {cls.id: cls for cls in (Uniform, Palette, Predictive, Learned)}
NAMES: dict[str, type[Method]] = {cls.name: cls for cls in METHODS.values()}
# The learned method does not beat the predictive one yet (docs/TRAINING.md): it is chosen by name.
DEFAULT_METHOD = Predictive.name


def by_name(name: str) -> type[Method]:
    if name not in NAMES:
        raise SdliteError(f"unknown method {name!r}: choose one of {', '.join(NAMES)}")
    return NAMES[name]


def by_id(method_id: int) -> type[Method]:
    if method_id not in METHODS:
        raise SdliteError(f"unsupported coding method {method_id} in .sdc file")
    return METHODS[method_id]



__all__ = ["Coded", "EffortSearch", "Method", "ModelParts", "METHODS", "NAMES", "by_id", "by_name",
           "DEFAULT_METHOD"]
