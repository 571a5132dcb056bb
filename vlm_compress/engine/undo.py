"""The undo recorder: every attribute replaced and every hook added on one model instance, put back exactly.

:class:`~vlm_compress.patching.CompressionHandle` owns one; the engine installs its wrappers and hooks through it,
and an adapter that must change the instance (a hook on its vision tower, say) receives it too, never the handle.

Room: the engine. Imports nothing from vlm_compress.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()
#: transformers' mark on a model whose output-capture hooks are installed (``utils.output_capturing``)
_CAPTURE_FLAG = "_output_capturing_hooks_installed"
_CAPTURE_MODULE = "transformers.utils.output_capturing"


def _undo_capture(before: dict) -> None:
    for module, (hooks, flag) in before.items():
        if flag is _MISSING and _CAPTURE_FLAG in module.__dict__:
            delattr(module, _CAPTURE_FLAG)
        for key in [k for k in module._forward_hooks if k not in hooks]:
            if getattr(module._forward_hooks[key], "__module__", None) == _CAPTURE_MODULE:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)


class UndoRecorder:
    """Records changes to model instances and undoes them in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Any]] = []

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` on the instance, remembering what to put back."""
        previous = obj.__dict__.get(name, _MISSING)
        self._undo.append(("attr", (obj, name, previous)))
        setattr(obj, name, value)

    def track_output_capture(self, model: Any) -> None:
        """Undo what transformers itself installs on ``model`` while patched: the output-capture hooks it adds to
        a submodule the first time its hidden states or attentions are requested (an adapter may be the first
        to ask, e.g. for a SigLIP tower's hidden states), with the flag that says they are installed."""
        before = {
            module: (set(module._forward_hooks), module.__dict__.get(_CAPTURE_FLAG, _MISSING))
            for module in model.modules()
        }
        self._undo.append(("capture", before))

    def add_hook(self, removable: Any) -> Any:
        """Own a ``torch.utils.hooks.RemovableHandle`` (anything with ``remove()``)."""
        self._undo.append(("hook", removable))
        return removable

    def restore(self) -> None:
        """Undo every recorded change, last first; raises after trying them all if any failed."""
        errors = []
        while self._undo:
            kind, item = self._undo.pop()
            try:
                if kind == "hook":
                    item.remove()
                elif kind == "capture":
                    _undo_capture(item)
                else:
                    obj, name, previous = item
                    if previous is _MISSING:
                        delattr(obj, name)
                    else:
                        setattr(obj, name, previous)
            except Exception as err:  # keep restoring the rest, report afterwards
                errors.append(err)
        if errors:
            raise RuntimeError(f"vlm_compress could not fully restore the model: {errors}")
