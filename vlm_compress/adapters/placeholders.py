"""Where the image tokens are: giving every image of a call its run of placeholder columns.

Shared by the adapters whose processors expand each image into a run of placeholder tokens.

Room: adapters. Imports only ``errors``.
"""

from __future__ import annotations

import torch

from ..errors import InputMismatchError


def _run_edges(is_image: torch.Tensor) -> torch.Tensor:
    """``[B, L + 1]``: +1 where a run of placeholder tokens starts, -1 just after one ends."""
    return torch.nn.functional.pad(is_image.int(), (1, 1)).diff(dim=1)


def placeholder_blocks(is_image: torch.Tensor) -> int:
    """How many separate runs of placeholder tokens ``is_image [B, L]`` holds (placeholders of two images that
    touch form one run)."""
    return int((_run_edges(is_image) == 1).sum())


def placeholder_runs(is_image: torch.Tensor) -> list[int]:
    """The lengths of those runs, row by row and left to right (InternVL: one run per image, between ``<img>``
    and ``</img>``)."""
    edges = _run_edges(is_image)
    starts, ends = torch.nonzero(edges == 1), torch.nonzero(edges == -1)  # row-major: they pair up in order
    return (ends[:, 1] - starts[:, 1]).tolist()


def assign_image_slots(
    is_image: torch.Tensor, tokens_per_image: list[int], *, placeholder: str, prompt_images: int | None = None
) -> list[tuple[int, torch.Tensor]]:
    """Give every image, in batch order, the next ``tokens_per_image[i]`` placeholder columns of its row.

    ``is_image: [B, L]`` -> ``[(row, columns [N_i])]``. Raises :class:`InputMismatchError` when the number of
    placeholders does not match the images, or an image's placeholders would straddle two rows.
    ``prompt_images``: how many images the prompt's placeholders stand for, when the adapter can tell (for the
    message); otherwise the message counts the separate runs of placeholder tokens.
    """
    per_row = [torch.nonzero(row).flatten() for row in is_image]
    total_tokens, total_needed = int(is_image.sum()), sum(tokens_per_image)
    if total_tokens != total_needed:
        images = len(tokens_per_image)
        if prompt_images is not None:
            relation = "more" if prompt_images > images else "fewer"
            head = (
                f"the prompt has {relation} image placeholders than images: {prompt_images} {placeholder} "
                f"placeholder(s) for {images} image(s)"
            )
        else:
            head = (
                f"the prompt's {placeholder} placeholders ({placeholder_blocks(is_image)} separate run(s) of "
                f"tokens) do not match the {images} image(s) given"
            )
        raise InputMismatchError(
            f"{head}: the {images} image(s) give {total_needed} visual tokens "
            f"({'+'.join(map(str, tokens_per_image))}) but the prompt holds {total_tokens} {placeholder} placeholder "
            f"tokens; put exactly one {placeholder} in the text per image and build the inputs with the model's "
            "processor"
        )
    slots, row, used = [], 0, 0
    for i, n in enumerate(tokens_per_image):
        while row < len(per_row) and used == per_row[row].numel():
            row, used = row + 1, 0
        if row >= len(per_row) or used + n > per_row[row].numel():
            raise InputMismatchError(
                f"image {i}'s {n} placeholder tokens do not fit in prompt row {row}; each row must hold whole images"
            )
        slots.append((row, per_row[row][used : used + n]))
        used += n
    return slots
