"""methods.validate: the hyper-parameter checks every method's __post_init__ uses, and their one message shape."""

from __future__ import annotations

import math

import pytest

import vlm_compress as vlmc
from vlm_compress.errors import BudgetError
from vlm_compress.methods.validate import check_choice, check_int, check_number, is_int, is_number


def test_ints_and_numbers_are_never_bools():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number("1")


@pytest.mark.parametrize("value", [0, True, 1.5, "2", None])
def test_check_int(value):
    with pytest.raises(ValueError, match=rf"^m: k must be an int >= 1 \(hint\), got {value!r}$"):
        check_int("m", "k", value, minimum=1, note=" (hint)")


def test_check_int_accepts_the_minimum():
    check_int("m", "k", 1, minimum=1)


def test_check_choice():
    check_choice("m", "mode", "a", ("a", "b"))
    check_choice("m", "mode", None, ("a", "b"), allow_none=True)
    with pytest.raises(ValueError, match=r"^m: mode must be one of \('a', 'b'\), got 'c'$"):
        check_choice("m", "mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"^m: mode must be one of \('a', 'b'\) or None, got 'c'$"):
        check_choice("m", "mode", "c", ("a", "b"), allow_none=True)
    with pytest.raises(ValueError, match=r"^m: mode must be 'a' or 'b', got None$"):
        check_choice("m", "mode", None, ("a", "b"), expected="'a' or 'b'")


@pytest.mark.parametrize(
    "bounds, text",
    [
        ({"above": 0, "at_most": 1}, r"must lie in \(0, 1\]"),
        ({"at_least": -1, "at_most": 1}, r"must lie in \[-1, 1\]"),
        ({"above": 0}, "must be > 0"),
        ({"at_least": 0}, "must be >= 0"),
        ({"at_most": -2}, "must be <= -2"),
    ],
)
def test_check_number_says_its_bounds(bounds, text):
    with pytest.raises(ValueError, match=rf"^m: x {text} \(hint\), got nan$"):
        check_number("m", "x", math.nan, note=" (hint)", **bounds)


def test_check_number_types_none_and_error_class():
    check_number("m", "x", 1, above=0, at_most=1)
    check_number("m", "x", None, above=0, allow_none=True)
    with pytest.raises(BudgetError, match=r"^m: r must lie in \(0, 1\], got True$"):
        check_number("m", "r", True, above=0, at_most=1, error=BudgetError)
    with pytest.raises(ValueError, match="got 'a'$"):
        check_number("m", "x", "a", above=0)
    check_number("m", "x", True, above=0, typed=False)  # untyped: only the comparison decides
    with pytest.raises(TypeError):
        check_number("m", "x", "a", above=0, typed=False)
    with pytest.raises(ValueError, match=r"^m: t is a cosine, got 2$"):
        check_number("m", "t", 2, at_most=1, expected="is a cosine")


def test_globalcom2_checks_through_the_base_class():
    # GlobalCom2 runs Method.__post_init__ (budget, order) and may leave the budget to its retention ratio
    assert vlmc.get_method("globalcom2").budget is None
    with pytest.raises(
        ValueError, match=r"globalcom2: order must be one of \('original', 'selection', 'score'\)"
    ):
        vlmc.get_method("globalcom2", order="sideways")
    with pytest.raises(vlmc.BudgetError):
        vlmc.get_method("uniform", budget=None)
