"""Backend choice for the kernels: ``VLMC_BACKEND=auto|torch|triton`` or :func:`set_backend`.

``auto`` runs Triton on CUDA tensors when Triton imports, torch otherwise. ``triton`` forces the kernels
(on CPU tensors they need ``TRITON_INTERPRET=1``). When a kernel fails, that op warns once and stays on
torch for the rest of the process.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "VLMC_BACKEND"
T = TypeVar("T")

_override: str | None = None
_failed_ops: set[str] = set()


class KernelUnsupported(Exception):
    """Raised by a launcher for inputs its kernel does not handle; the dispatcher quietly uses torch."""


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(
            f"unknown kernel backend {name!r} (from {source}); choose one of {', '.join(BACKENDS)}"
        )
    return name


def set_backend(name: str | None) -> None:
    """Choose the backend for every op (``"auto"``, ``"torch"`` or ``"triton"``); ``None`` reads the env again.

    Also forgets earlier kernel failures, so a forced ``"triton"`` is tried again.
    """
    global _override
    _override = None if name is None else _check_name(name, "set_backend")
    _failed_ops.clear()


def get_backend() -> str:
    """The backend in force: the :func:`set_backend` choice, else ``$VLMC_BACKEND``, else ``"auto"``."""
    if _override is not None:
        return _override
    return _check_name(os.environ.get(ENV_VAR, "auto"), f"${ENV_VAR}")


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` works (cached)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _wants_triton(op: str, tensors: tuple[torch.Tensor, ...]) -> bool:
    backend = get_backend()
    if backend == "torch" or op in _failed_ops:
        return False
    if backend == "auto":
        return all(t.is_cuda for t in tensors) and triton_available()
    if not triton_available():
        _fail(op, ImportError("triton is not installed (pip install 'vlm-compress[triton]')"))
        return False
    return True


def _fail(op: str, error: Exception) -> None:
    _failed_ops.add(op)
    message = f"vlm_compress.kernels.{op}: Triton kernel unavailable ({error}); using the torch path"
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def dispatch(
    op: str, tensors: tuple[torch.Tensor, ...], triton_fn: Callable[[], T], torch_fn: Callable[[], T]
) -> T:
    """Run ``triton_fn`` when the backend and ``tensors`` call for it, else (or when it fails) ``torch_fn``."""
    if _wants_triton(op, tensors):
        try:
            return triton_fn()
        except KernelUnsupported as reason:
            logger.debug("%s: %s; using the torch path", op, reason)
        except Exception as error:  # a broken driver or compiler must not break selection
            _fail(op, error)
    return torch_fn()
