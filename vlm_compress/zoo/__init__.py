"""Models the project builds itself: tiny random-weight models for tests and examples (:mod:`.synthetic`)."""

from .synthetic import build_tiny, tiny_inputs

__all__ = ["build_tiny", "tiny_inputs"]
