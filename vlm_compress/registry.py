"""Name -> method class and ``config.model_type`` -> adapter class, both imported lazily.

Room: lookup only. Imports ``errors``; methods and adapters are named by path and imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import UnknownMethodError, UnsupportedModelError

if TYPE_CHECKING:
    from .adapters.base import Adapter
    from .methods.base import Method

# name -> "module:Class"; the class is imported the first time it is asked for
_METHODS: dict[str, str] = {
    "random": "vlm_compress.methods.random:RandomSelection",
    "uniform": "vlm_compress.methods.uniform:Uniform",
    "pool": "vlm_compress.methods.pool:Pool",
    "cls_attention": "vlm_compress.methods.cls_attention:ClsAttention",
    "tome": "vlm_compress.methods.tome:ToMe",
    "fastv": "vlm_compress.methods.fastv:FastV",
    "todre": "vlm_compress.methods.todre:ToDRE",
    "mmtok": "vlm_compress.methods.mmtok:MMTok",
    "globalcom2": "vlm_compress.methods.globalcom2:GlobalCom2",
    "tap": "vlm_compress.methods.tap:TAP",
    "visionzip": "vlm_compress.methods.visionzip:VisionZip",
    "divprune": "vlm_compress.methods.divprune:DivPrune",
    "vispruner": "vlm_compress.methods.vispruner:VisPruner",
    "cdpruner": "vlm_compress.methods.cdpruner:CDPruner",
    "dart": "vlm_compress.methods.dart:DART",
    "sparsevlm": "vlm_compress.methods.sparsevlm:SparseVLM",
    "pdrop": "vlm_compress.methods.pdrop:PDrop",
    "mustdrop": "vlm_compress.methods.mustdrop:MustDrop",
}

# model_type -> "module:Class"
_ADAPTERS: dict[str, str] = {
    "llava": "vlm_compress.adapters.llava:LlavaAdapter",
    "llava_next": "vlm_compress.adapters.llava_next:LlavaNextAdapter",
    "qwen2_vl": "vlm_compress.adapters.qwen2_vl:Qwen2VLAdapter",
    "qwen2_5_vl": "vlm_compress.adapters.qwen2_vl:Qwen2VLAdapter",
    "qwen3_vl": "vlm_compress.adapters.qwen3_vl:Qwen3VLAdapter",
    "qwen3_vl_moe": "vlm_compress.adapters.qwen3_vl:Qwen3VLAdapter",
    "llava_onevision": "vlm_compress.adapters.llava_onevision:LlavaOnevisionAdapter",
    "gemma3": "vlm_compress.adapters.gemma3:Gemma3Adapter",
    "internvl": "vlm_compress.adapters.internvl:InternVLAdapter",
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_method(name: str, target: str | type) -> None:
    """Register a method class (or its ``"module:Class"`` path) under ``name``; later names win."""
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    _METHODS[name] = target


def list_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(_METHODS)


def list_adapters() -> list[str]:
    """``config.model_type`` values that an adapter supports."""
    return list(_ADAPTERS)


def method_class(name: str) -> type[Method]:
    if not isinstance(name, str) or name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _load(_METHODS[name])


def get_method(name: str, **kwargs: Any) -> Method:
    """Instantiate the method registered as ``name`` with its hyper-parameters (``budget=64``, ...)."""
    cls = method_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        from dataclasses import fields

        valid = ", ".join(f.name for f in fields(cls))
        raise TypeError(f"{name}: {err}; valid hyper-parameters: {valid}") from None


def describe_methods() -> dict[str, str]:
    """Name -> one-line description of every registered method."""
    return {name: method_class(name).description for name in _METHODS}


def adapter_class(model: Any) -> type[Adapter]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        kind = type(model).__name__
        raise UnsupportedModelError(
            f"no adapter for {kind} (config.model_type={model_type!r}); supported model types: "
            f"{', '.join(_ADAPTERS)}"
        )
    return _load(_ADAPTERS[model_type])
