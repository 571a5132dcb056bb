"""Compression methods, one per file. Import a class from its module, or use ``vlmc.get_method(name)``."""

from .base import Method, check_budget, resolve_budget

__all__ = ["Method", "check_budget", "resolve_budget"]
