"""What a model runs under: :class:`Setting`, one registered method at one budget (with extra hyper-parameters),
or ``Setting(FULL)``, the uncompressed model. The one such type of ``vlmc eval`` (sweep points, cache keys),
``vlmc bench`` (measured variants) and ``vlmc run`` (its ``full`` row).

Pure data: imports nothing of vlm_compress at import time (:meth:`Setting.compress` imports the patching entry
point when it is called).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the method name of the uncompressed reference
FULL = "full"


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a registered method at a budget, or ``Setting(FULL)``, the uncompressed model.

    ``params``: extra hyper-parameters as ``((name, value), ...)`` pairs (hashable, so a setting can key a dict).
    """

    method: str
    budget: int | float | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method != FULL and self.budget is None:
            raise ValueError(
                f"setting {self.method!r} needs a budget (tokens per image, or a fraction in (0, 1])"
            )

    @classmethod
    def of(cls, method: str, budget: int | float | None = None, **params: Any) -> Setting:
        """``Setting.of("todre", 64, relevance_keep=0.3)``: hyper-parameters as keywords (stored sorted by name)."""
        return cls(method, budget, tuple(sorted(params.items())))

    def compress(self, model: Any, **options: Any) -> Any:
        """``vlmc.compress(model, method, budget=..., **params, **options)`` for this setting: a context manager
        whose ``report`` holds the per-image records. ``options`` are the call's own (``processor=``,
        ``position_ids=``); the full setting has nothing to patch and raises ``ValueError``."""
        if self.is_full:
            raise ValueError("Setting(FULL) is the uncompressed model: there is nothing to patch")
        from ..patching import compress

        return compress(model, self.method, budget=self.budget, **dict(self.params), **options)

    @property
    def is_full(self) -> bool:
        return self.method == FULL

    @property
    def key(self) -> str:
        """``"full"`` or ``"<method>-<budget>"``: the setting's name in caches and reports (``vlmc eval``)."""
        return FULL if self.is_full else f"{self.method}-{self.budget}"

    @property
    def label(self) -> str:
        """``"full"`` or ``"<method>@<budget>"``: the setting's name in tables (``vlmc bench``)."""
        return FULL if self.is_full else f"{self.method}@{self.budget}"
