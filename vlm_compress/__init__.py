"""vlm_compress: prune, merge and reorder the visual tokens of HuggingFace vision-language models.

import vlm_compress as vlmc
with vlmc.compress(model, "uniform", budget=64) as run:
    out = model.generate(**inputs, max_new_tokens=20)
print(run.report)
"""

from __future__ import annotations

import importlib
from typing import Any

from . import functional, methods
from .errors import (
    AlreadyPatchedError,
    BudgetError,
    ImageNotFoundError,
    ImageTooLargeError,
    InputMismatchError,
    InvalidFeaturesError,
    InvalidImageError,
    MissingSignalError,
    UnknownMethodError,
    UnsupportedModelError,
    VlmcError,
)
from .methods.base import Method
from .patching import CompressionHandle, active_handle, compress, patch
from .registry import describe_methods, get_method, list_adapters, list_methods, register_method
from .selection import Report, Selection
from .views import LayerContext, Signals, TokenRegion, VisualContext

__version__ = "0.1.0"

__all__ = [
    "AlreadyPatchedError",
    "BudgetError",
    "CompressionHandle",
    "ImageNotFoundError",
    "ImageTooLargeError",
    "InputMismatchError",
    "InvalidFeaturesError",
    "InvalidImageError",
    "LayerContext",
    "Method",
    "MissingSignalError",
    "Report",
    "Selection",
    "Signals",
    "TokenRegion",
    "UnknownMethodError",
    "UnsupportedModelError",
    "VisualContext",
    "VlmcError",
    "active_handle",
    "compress",
    "describe_methods",
    "functional",
    "get_method",
    "images",
    "insert_tap",
    "list_adapters",
    "list_methods",
    "methods",
    "patch",
    "register_method",
    "zoo",
]


def __getattr__(name: str) -> Any:
    # heavy optional parts load on first use
    if name in ("zoo", "eval", "bench", "viz", "kernels", "nn", "images", "tap"):
        return importlib.import_module(f".{name}", __name__)
    if name == "insert_tap":
        return importlib.import_module(".tap", __name__).insert_tap
    raise AttributeError(f"module 'vlm_compress' has no attribute {name!r}")
