"""The one model loader: ``load(spec, dtype=, device=)`` -> ``(model, processor)`` in eval mode.

``spec`` is one of

- ``"shapes"`` (:data:`DEFAULT_MODEL`): the embedded ShapesVQA checkpoint shipped in the package, loaded through
  ``from_pretrained`` from local files (:func:`checkpoint_path`);
- ``"tiny"``: a tiny random-weight LLaVA (:func:`.synthetic.build_tiny`) with the character-level
  :class:`.synthetic.ToyProcessor`, for tests and smoke runs (answers are noise);
- a synthetic shape (:data:`.synthetic.SYNTHETIC`, e.g. ``"llava-1.5-7b"``): the real widths of a 7B-class model
  with a few random decoder layers (``layers=``, ``vision_layers=``); no processor (``None``), its inputs come
  from :func:`.synthetic.synthetic_inputs`;
- a local checkpoint folder or a HuggingFace id ``org/name`` (``AutoModelForImageTextToText`` and
  ``AutoProcessor.from_pretrained``; the hub may be unreachable offline). Any other bare name is an unknown zoo
  model: a ``ValueError`` that lists the available ones, before anything is downloaded.

``vlmc run``, ``vlmc bench``, ``vlmc demo``, ``vlmc eval`` and the lmms-eval plugin all load through here.
May import torch, transformers and :mod:`vlm_compress.zoo`'s own modules (the synthetic factory), nothing above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"
#: the shipped checkpoints
MODELS = ("shapes",)
DEFAULT_MODEL = "shapes"
TINY = "tiny"
#: command-line names of the dtypes (``--dtype``)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(RuntimeError, OSError):
    """A checkpoint id or path that ``from_pretrained`` cannot load (missing folder, unreachable hub)."""


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or ``"float32"``/``"bfloat16"``/``"float16"``, or a ``torch.dtype``) ->
    ``torch.dtype``; ``None`` stays ``None``."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name in DTYPES:
        return DTYPES[name]
    by_torch_name = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}
    if name in by_torch_name:
        return by_torch_name[name]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def checkpoint_path(name: str = DEFAULT_MODEL) -> Path:
    """Directory of the shipped checkpoint ``name`` (loadable with ``from_pretrained``)."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}")
    path = CHECKPOINTS_DIR / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the zoo checkpoint {name!r} is missing from {path}; reinstall vlm_compress or rebuild it with "
            f"`vlmc zoo train --out {path}`"
        )
    return path


def shipped_model_available(name: str = DEFAULT_MODEL) -> bool:
    """Whether the shipped checkpoint ``name`` is installed."""
    return (CHECKPOINTS_DIR / name / "config.json").is_file()


def load(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: Any = "cpu",
    **synthetic_kwargs: Any,
) -> tuple[Any, Any]:
    """``(model, processor)`` for ``spec`` (see the module docstring) in eval mode on ``device``, in ``dtype``
    (default fp32; a name as in :func:`resolve_dtype` or a ``torch.dtype``).

    ``synthetic_kwargs`` (``layers``, ``vision_layers``, ``seed``) only go with a synthetic shape. Unknown zoo or
    checkpoint names raise clear errors that name the spec: ``ValueError`` for a bare name that is no zoo model,
    :class:`ModelLoadError` for a folder or id that ``from_pretrained`` cannot load.
    """
    from .synthetic import SYNTHETIC

    dtype = resolve_dtype(dtype)
    if synthetic_kwargs and spec not in SYNTHETIC:
        raise TypeError(
            f"{', '.join(synthetic_kwargs)}: only a synthetic shape ({', '.join(SYNTHETIC)}) takes them"
        )
    if spec in SYNTHETIC:
        from .synthetic import build_synthetic

        model = build_synthetic(spec, dtype=dtype or torch.float32, device=device, **synthetic_kwargs)
        return model, None
    if spec == TINY:
        from .synthetic import ToyProcessor, build_tiny

        model = build_tiny("llava")
        processor = ToyProcessor(model)
    elif spec in MODELS:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        path = checkpoint_path(spec)
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(path)
    elif "/" not in spec and not Path(spec).exists():
        available = (*MODELS, TINY, *SYNTHETIC)
        raise ValueError(
            f"unknown zoo model {spec!r}; available: {', '.join(available)}, or a checkpoint folder or a "
            "HuggingFace id (org/name)"
        )
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(spec)
            model = AutoModelForImageTextToText.from_pretrained(spec, dtype=dtype or torch.float32)
        except OSError as err:
            raise ModelLoadError(
                f"could not load --model {spec!r} (a checkpoint folder, or a hub id; the hub may be unreachable "
                f"offline): {err}"
            ) from err
        return model.to(device=device).eval(), processor
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval(), processor
