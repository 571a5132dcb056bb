"""Exceptions raised at the library's boundary.

Every error a user can trigger with bad input is one of these, with a message that says what was wrong and
what is allowed. They subclass the built-in exception a caller would naturally catch (``ValueError`` for bad
values, ``TypeError`` for bad types, ``RuntimeError`` for bad state).
"""

from __future__ import annotations


class VlmcError(Exception):
    """Base class of every exception raised by vlm_compress."""


class BudgetError(VlmcError, ValueError):
    """A token budget is out of range or of the wrong kind."""


class UnknownMethodError(VlmcError, ValueError):
    """A method name is not registered."""


class UnsupportedModelError(VlmcError, TypeError):
    """No adapter knows this model's ``config.model_type``, or the model is configured in a way we cannot patch."""


class AlreadyPatchedError(VlmcError, RuntimeError):
    """The model instance is already patched by vlm_compress."""


class InputMismatchError(VlmcError, ValueError):
    """The model inputs disagree with each other (images vs placeholder tokens, batch sizes, ...)."""


class InvalidFeaturesError(VlmcError, ValueError):
    """Visual features contain NaN or inf, or have an unexpected shape."""


class MissingSignalError(VlmcError, RuntimeError):
    """A method asked for a signal (e.g. [CLS] attention) that this model cannot provide."""


class InvalidImageError(VlmcError, ValueError):
    """An image file or buffer cannot be read as an image (corrupt, truncated, empty, not an image), or it has no
    pixels. The message names the file."""


class ImageTooLargeError(InvalidImageError):
    """An image has more pixels than allowed; raised from the file's header, before its pixels are decoded."""


class ImageNotFoundError(InvalidImageError, FileNotFoundError):
    """An image path does not name a file (also a ``FileNotFoundError``)."""
