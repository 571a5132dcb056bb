"""The undo recorder: every attribute replaced and every hook added on one model instance, put back exactly.

:class:`~vlm_compress.patching.CompressionHandle` owns one; the engine installs its wrappers and hooks through it,
and an adapter that must change the instance (a hook on its vision tower, say) receives it too, never the handle.

Room: the engine. Imports nothing from vlm_compress.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


class UndoRecorder:
    """Records changes to model instances and undoes them in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Any]] = []

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` on the instance, remembering what to put back."""
        previous = obj.__dict__.get(name, _MISSING)
        self._undo.append(("attr", (obj, name, previous)))
        setattr(obj, name, value)

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
