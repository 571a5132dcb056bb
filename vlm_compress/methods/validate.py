"""Checks of a method's hyper-parameters, for its ``__post_init__``.

Each check raises with one message shape, ``"{method}: {field} {expected}, got {value!r}"``, so every method
says the same thing the same way (``"fastv: prune_layer must be an int >= 1 (the paper uses 2), got 0"``).
``note`` adds a hint after the expectation (what the paper uses); ``expected`` replaces the expectation text
where a plain range or list reads worse. Bools are never accepted as ints or numbers.

May import :mod:`vlm_compress.errors` only: no tensors, no methods, no models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_layers_after",
    "check_number",
    "is_int",
    "is_number",
]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(method: str, field: str, value: Any, expected: str, error: type[Exception]) -> None:
    raise error(f"{method}: {field} {expected}, got {value!r}")


def check_int(method: str, field: str, value: Any, *, minimum: int, note: str = "") -> None:
    """``value`` must be an int (not a bool) ``>= minimum``; else ``ValueError``."""
    if not is_int(value) or value < minimum:
        _fail(method, field, value, f"must be an int >= {minimum}{note}", ValueError)


def check_choice(
    method: str,
    field: str,
    value: Any,
    choices: Sequence[Any],
    *,
    allow_none: bool = False,
    expected: str | None = None,
) -> None:
    """``value`` must be one of ``choices`` (or ``None`` with ``allow_none``); else ``ValueError``.

    The message says ``must be one of {choices}`` (``... or None``), or ``must be {expected}`` when given.
    """
    allowed = (None, *choices) if allow_none else tuple(choices)
    if value not in allowed:
        text = expected or f"one of {tuple(choices)}" + (" or None" if allow_none else "")
        _fail(method, field, value, f"must be {text}", ValueError)


def check_number(
    method: str,
    field: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    typed: bool = True,
    allow_none: bool = False,
    note: str = "",
    expected: str | None = None,
    error: type[Exception] = ValueError,
) -> None:
    """``value`` must be a number in the given bounds (``above < value``, ``at_least <= value <= at_most``).

    ``typed``: reject anything but an int or float (bools included) with the same message; ``typed=False``
    only compares, so a value that cannot be compared raises the comparison's own ``TypeError``. NaN never
    passes a bound. ``allow_none``: ``None`` passes. The message says ``must lie in (a, b]`` for two bounds,
    ``must be > a`` / ``>= a`` / ``<= b`` for one (then ``note``), or ``expected`` when given; ``error`` is
    the exception class (e.g. :class:`~vlm_compress.errors.BudgetError` for a budget-like ratio).
    """
    if allow_none and value is None:
        return
    low = above if above is not None else at_least
    ok = not typed or is_number(value)
    if ok and low is not None:
        ok = value > low if above is not None else value >= low
    if ok and at_most is not None:
        ok = value <= at_most
    if ok:
        return
    if expected is None:
        if low is not None and at_most is not None:
            expected = f"must lie in {'(' if above is not None else '['}{low}, {at_most}]"
        elif low is not None:
            expected = f"must be {'>' if above is not None else '>='} {low}"
        else:
            expected = f"must be <= {at_most}"
    _fail(method, field, value, expected + note, error)


def check_bool(method: str, field: str, value: Any, *, expected: str = "must be a bool") -> None:
    """``value`` must be ``True`` or ``False`` (not ``0`` / ``1``); else ``ValueError``."""
    if not isinstance(value, bool):
        _fail(method, field, value, expected, ValueError)


def check_layers_after(method: str, field: str, value: Any, *, non_empty: bool = False) -> tuple:
    """``value`` must be a list of "after this layer" entries: ints ``>= 0`` (layer indices) or floats in
    ``[0, 1)`` (fractions of the depth), at least one with ``non_empty``; returns it as a tuple, else
    ``ValueError`` (see :func:`vlm_compress.methods.base.points_after_layers`)."""
    if not isinstance(value, (list, tuple)) or (non_empty and not value):
        _fail(
            method, field, value, f"must be a {'non-empty ' if non_empty else ''}list of layers", ValueError
        )
    for entry in value:
        if not (is_int(entry) and entry >= 0) and not (isinstance(entry, float) and 0.0 <= entry < 1.0):
            _fail(
                method,
                f"{field} entries",
                entry,
                "must be ints >= 0 (layers) or floats in [0, 1) (fractions of the depth)",
                ValueError,
            )
    return tuple(value)
