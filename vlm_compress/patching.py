"""Patch one model instance, record what happened, undo it exactly.

One :class:`CompressionHandle` owns every replaced attribute and every hook handle it installs; ``remove()``
puts them back in reverse order, also when the body of a ``with`` block raised. Nothing outside the instance
(no class, no module of transformers) is ever touched. The handle resolves the method and the position policy,
picks the adapter and builds the engine's :class:`~vlm_compress.engine.session.Session`, which does the rest.

Room: the public entry point. May import ``registry``, ``engine``, ``methods.base``, ``selection`` and
``errors``; it never imports an adapter module (the registry does, lazily).
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from .engine import Session, UndoRecorder
from .engine.options import PatchOptions
from .engine.session import check_attention
from .errors import AlreadyPatchedError, UnsupportedModelError
from .methods.base import Method
from .registry import adapter_class, get_method
from .selection import POSITION_POLICIES, Report

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, CompressionHandle] = weakref.WeakKeyDictionary()


def active_handle(model: nn.Module) -> CompressionHandle | None:
    """The handle currently patching ``model``, if any."""
    return _ACTIVE.get(model)


def check_weights_loaded(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` when weights are on the ``meta`` device without anything to load them.

    A model built under ``torch.device("meta")`` or accelerate's ``init_empty_weights`` has shapes but no values;
    it can neither run nor be compressed. Weights that accelerate offloads (``cpu_offload``, a ``device_map`` with
    offloading) are on ``meta`` too, but a hook of their module (``_hf_hook``) loads them for every call: those
    are fine.
    """
    offloaded: set[str] = set()
    empty: list[str] = []
    total = 0
    for module_name, module in model.named_modules():
        if getattr(module, "_hf_hook", None) is not None or any(
            module_name.startswith(prefix) for prefix in offloaded
        ):
            offloaded.add(f"{module_name}." if module_name else "")
            continue
        for tensor_name, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            total += 1
            if tensor.is_meta:
                empty.append(f"{module_name}.{tensor_name}" if module_name else tensor_name)
    if empty:
        raise UnsupportedModelError(
            f"{len(empty)} of the {total} weights and buffers of this {type(model).__name__} are on the meta device "
            f"(e.g. {empty[0]!r}): it was built without its weights (torch.device('meta') or accelerate's "
            "init_empty_weights), so it can neither run nor be compressed; load the weights first "
            "(from_pretrained(...), or model.to_empty(device=...) then load_state_dict(...)), then patch it"
        )


class CompressionHandle:
    """A patched model. Use as a context manager, or call :meth:`remove` yourself.

    Attributes:
        model: the patched instance.
        method: the :class:`~vlm_compress.methods.base.Method` that chooses the tokens.
        report: a :class:`~vlm_compress.selection.Report` of every patched call.
        position_ids: the policy in effect, ``"original"`` or ``"contiguous"`` (see :func:`patch`); also in
            ``report.position_ids``, with where it came from in ``report.position_ids_source``.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | Method,
        *,
        position_ids: str | None = None,
        processor: Any = None,
        **method_kwargs: Any,
    ):
        if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
            raise UnsupportedModelError(
                f"expected a transformers model instance (an nn.Module with a config), got {type(model).__name__}"
            )
        if isinstance(method, Method):
            if method_kwargs:
                raise TypeError(
                    "pass hyper-parameters either to the method object or as keyword arguments with a method "
                    f"name, not both (got a {type(method).__name__} and {sorted(method_kwargs)})"
                )
        elif isinstance(method, str):
            method = get_method(method, **method_kwargs)
        else:
            raise TypeError(
                f"method must be a registered name or a Method instance, got {type(method).__name__}"
            )
        model_type = getattr(model.config, "model_type", None)
        if position_ids is None:
            position_ids = method.position_ids_for(model_type)
            source = f"{method.name}'s default on {model_type}"
        elif isinstance(position_ids, str) and position_ids in POSITION_POLICIES:
            source = "position_ids argument"
        else:
            valid = ", ".join(repr(policy) for policy in POSITION_POLICIES)
            raise ValueError(
                f"position_ids must be one of {valid} or None (the method's default, "
                f"{method.position_ids_for(model_type)!r} for {method.name} on {model_type}), got {position_ids!r}"
            )
        if model in _ACTIVE:
            raise AlreadyPatchedError(
                f"this {type(model).__name__} is already patched by vlm_compress (method "
                f"{_ACTIVE[model].method.name!r}); remove that handle (or leave its `with` block) first"
            )
        self.model = model
        self.method = method
        self.position_ids = position_ids
        self.tokenizer = getattr(processor, "tokenizer", processor)
        #: the processor's image processor, when a full processor was given (``None`` for a tokenizer alone)
        self.image_processor = getattr(processor, "image_processor", None)
        self.report = Report(position_ids=position_ids, position_ids_source=source)
        self._undo = UndoRecorder()
        self._undo.track_output_capture(model)
        self._active = False
        adapter = adapter_class(model)
        check_weights_loaded(model)
        try:
            check_attention(model)
            options = PatchOptions(position_ids, self.tokenizer, self.image_processor)
            self.session = Session(adapter(model, self._undo, options), method, self.report, self._undo)
        except BaseException:
            self._undo.restore()
            raise
        _ACTIVE[model] = self
        self._active = True

    # ------------------------------------------------------------------ public API
    @property
    def active(self) -> bool:
        return self._active

    def remove(self) -> None:
        """Undo the patch. Safe to call twice."""
        if not self._active:
            return
        try:
            self._undo.restore()
        finally:
            self._active = False
            _ACTIVE.pop(self.model, None)

    def __enter__(self) -> CompressionHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<CompressionHandle {self.method} on {type(self.model).__name__} ({state})>"


def patch(
    model: nn.Module,
    method: str | Method,
    *,
    position_ids: str | None = None,
    processor: Any = None,
    **method_kwargs: Any,
) -> CompressionHandle:
    """Patch ``model`` so its language model runs on the visual tokens that ``method`` keeps.

    Args:
        model: a supported transformers VLM instance (``vlmc.registry.list_adapters()``).
        method: a registered name (``vlmc.list_methods()``) or a method object.
        position_ids: ``"original"``: kept tokens keep the position ids they had in the full sequence;
            ``"contiguous"``: the shortened sequence is renumbered without gaps; ``None`` (default): what the
            method's official code does on this model family (``method.position_ids_for(model_type)``, e.g.
            ``"contiguous"`` for MMTok on LLaVA, ``"original"`` on Qwen2.5-VL; ``"original"`` for methods without
            official code). The choice is in ``report.position_ids``.
        processor: optional processor or tokenizer, for methods that read the prompt's text; a full
            processor also tells LLaVA-1.5 whether its images were padded to square (``do_pad``).
        **method_kwargs: the method's hyper-parameters, e.g. ``budget=64`` (tokens per image) or
            ``budget=0.25`` (fraction of each image's tokens).

    Returns:
        A :class:`CompressionHandle`; ``handle.remove()`` undoes the patch exactly.
    """
    return CompressionHandle(model, method, position_ids=position_ids, processor=processor, **method_kwargs)


def compress(
    model: nn.Module,
    method: str | Method,
    *,
    position_ids: str | None = None,
    processor: Any = None,
    **method_kwargs: Any,
) -> CompressionHandle:
    """Context-manager form of :func:`patch`: ``with vlmc.compress(model, "uniform", budget=64) as run: ...``.

    The patch is active from the call until the ``with`` block exits (normally or by an exception); ``run.report``
    then holds the per-image records.
    """
    return patch(model, method, position_ids=position_ids, processor=processor, **method_kwargs)
