"""Reading image files: one loader for every entry point that takes a path or bytes (``vlmc run --image``,
``vlmc bench --image``, the eval tasks' samples; the demo can use it too).

:func:`load_image` turns anything that is not a readable image into an :class:`~vlm_compress.errors.InvalidImageError`
that names the file and says what is allowed, never a PIL traceback:

- a missing path: :class:`~vlm_compress.errors.ImageNotFoundError` (also a ``FileNotFoundError``);
- an empty file, random bytes, a truncated or otherwise corrupt file: :class:`~vlm_compress.errors.InvalidImageError`;
- more pixels than ``max_pixels`` (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, about 89 megapixels):
  :class:`~vlm_compress.errors.ImageTooLargeError`, raised from the file's header before its pixels are decoded.

Images are not resized here: every processor resizes to what its model takes (docs/errors.md), so the pixels a
model sees are the same as when the processor is given the file's image directly.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from .errors import ImageNotFoundError, ImageTooLargeError, InvalidImageError

#: what :func:`load_image` accepts, for messages
ALLOWED = "a PNG, JPEG, WebP, BMP, GIF or TIFF file (any format Pillow reads)"

ImageSource = str | Path | bytes | bytearray | IO[bytes] | Image.Image


def default_max_pixels() -> int | None:
    """Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, read at call time; ``None``: no limit)."""
    return Image.MAX_IMAGE_PIXELS


def _describe(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return f"image file {str(source)!r}"
    if isinstance(source, (bytes, bytearray)):
        return f"image data ({len(source)} bytes)"
    if isinstance(source, Image.Image):
        return "the image"
    return f"image file {str(getattr(source, 'name', 'object'))!r}"


def check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """Raise :class:`ImageTooLargeError` (or :class:`InvalidImageError` for no pixels) for a ``width x height`` image."""
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{what} has no pixels ({width}x{height}); an image needs at least 1x1 pixel")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
            "(max_pixels); downscale it first, or pass a larger max_pixels if the memory for its pixels is "
            "available (about 4 bytes per pixel while decoding, more in the processor)"
        )


def load_image(source: ImageSource, *, max_pixels: int | None = None, name: str | None = None) -> Image.Image:
    """The image in ``source`` (a path, encoded bytes, a binary file object or a PIL image) as an RGB PIL image.

    Args:
        source: what to read.
        max_pixels: the most pixels (width x height) accepted, checked on the header before decoding; default:
            Pillow's ``Image.MAX_IMAGE_PIXELS`` (no limit when that is ``None``).
        name: how messages call the image (default: ``image file '<path>'``).

    Raises:
        ImageNotFoundError: ``source`` is a path that does not name a file.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
        InvalidImageError: the data is empty, not an image, truncated or corrupt, or has no pixels.
    """
    if max_pixels is None:
        max_pixels = default_max_pixels()
    what = _describe(source, name)
    if isinstance(source, Image.Image):
        check_size(source.width, source.height, max_pixels, what)
        return _to_rgb(source, what)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "does not exist"
            raise ImageNotFoundError(f"{what} {reason}; pass the path of {ALLOWED}")
        if path.stat().st_size == 0:
            raise InvalidImageError(f"{what} is empty (0 bytes); pass {ALLOWED}")
        opened: Any = path
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise InvalidImageError(f"{what} is empty (0 bytes); pass {ALLOWED}")
        opened = io.BytesIO(source)
    elif hasattr(source, "read"):
        opened = source
    else:
        raise TypeError(
            f"expected an image path, encoded bytes, a binary file object or a PIL image, got {type(source).__name__}"
        )
    try:
        with warnings.catch_warnings():
            # the size is checked below against max_pixels, which replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(opened)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(
            f"{what} is too large to open: {err}; downscale it first (Pillow refuses images over twice "
            "PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(f"{what} is not an image Pillow can identify; pass {ALLOWED}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidImageError(f"{what} cannot be read as an image ({err}); pass {ALLOWED}") from None
    check_size(image.width, image.height, max_pixels, what)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidImageError(
            f"{what} is truncated or corrupt ({image.format} header of {image.width}x{image.height}, but its "
            f"pixel data cannot be decoded: {err}); pass the complete file, {ALLOWED}"
        ) from None
    return _to_rgb(image, what)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise InvalidImageError(f"{what} (mode {image.mode}) cannot be converted to RGB ({err})") from None
