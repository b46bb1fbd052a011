"""The optional parts of amo and the pip extras that install them (pyproject.toml).

The core (`pip install 'amo[serve]'`) routes and plans from a bundle with onnxruntime alone;
generation (/invoke, /copilot's arms) needs torch and friends from `amo[arms]`. A missing extra is
found without importing anything (importing torch takes seconds).
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {  # extra -> the modules it provides that amo imports
    "arms": ("torch", "transformers", "peft"),
    "encoder": ("torch", "sentence_transformers"),  # a bundle without an ONNX encoder (installed by amo[arms])
}
INSTALLED_BY = {"arms": "arms", "encoder": "arms"}


class ExtraNotInstalled(RuntimeError):
    """A feature whose pip extra is not installed; the message names the command that installs it."""

    def __init__(self, feature: str, extra: str, missing: list[str]) -> None:
        self.feature, self.extra, self.missing = feature, extra, missing
        super().__init__(f"{feature} needs the {extra!r} extra, which is not installed (missing "
                         f"{', '.join(missing)}): pip install 'amo[{extra}]'")

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str]]]:  # crosses process boundaries
        return type(self), (self.feature, self.extra, self.missing)


def missing(part: str) -> list[str]:
    """The modules of `part` (a key of EXTRAS) that are not installed."""
    return [module for module in EXTRAS[part] if importlib.util.find_spec(module) is None]


def require(part: str, feature: str) -> None:
    """Raise ExtraNotInstalled naming `feature` and the extra to install when `part` is missing."""
    absent = missing(part)
    if absent:
        raise ExtraNotInstalled(feature, INSTALLED_BY[part], absent)
