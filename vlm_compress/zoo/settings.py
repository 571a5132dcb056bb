"""What a model runs under: :class:`Setting`, one registered method at one budget (with extra hyper-parameters),
or ``Setting(FULL)``, the uncompressed model. The one such type of ``vlmc eval`` (sweep points, cache keys),
``vlmc bench`` (measured variants) and ``vlmc run`` (its ``full`` row).

Pure data: imports nothing of vlm_compress.
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
