"""Stage-2 selection math: which visual columns of a decoder layer's sequence survive, as pure tensors.

In-LLM methods (FastV, ToDRE, ...) rank the columns of the sequence just before a decoder layer: ``attention``
``[B, L]`` is the head-averaged attention the prompt's last token gives every column, ``image_of`` ``[B, L]``
the image index of every visual column (``-1`` for text and padding), as
:class:`~vlm_compress.views.LayerContext` carries them. The result is a ``[B, L]`` bool keep mask over the
visual columns.

May import torch and the rest of ``functional/`` only: no contexts, no methods, no models, no hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["keep_top_attended"]


def keep_top_attended(
    attention: torch.Tensor, image_of: torch.Tensor, keep_count: Callable[[int, int], int]
) -> torch.Tensor:
    """``[B, L]`` bool: per image in each row, the ``keep_count(image, n)`` visual columns with the highest
    attention.

    ``attention``: ``[B, L]`` float; ``image_of``: ``[B, L]`` long, ``-1`` outside visual columns.
    ``keep_count(image, n)`` gets the image index and its ``n`` visual columns in that row, returns how many to
    keep (clipped to ``0..n``). Ties go to the earlier column; the other columns are ``False``.
    """
    keep = torch.zeros(image_of.shape, dtype=torch.bool, device=image_of.device)
    for image in torch.unique(image_of[image_of >= 0]).tolist():
        in_image = image_of == image
        for row in torch.nonzero(in_image.any(dim=1)).flatten().tolist():
            columns = torch.nonzero(in_image[row]).flatten()
            k = min(columns.numel(), keep_count(image, columns.numel()))
            if k <= 0:
                continue
            order = torch.sort(attention[row, columns].float(), descending=True, stable=True).indices[:k]
            keep[row, columns[order]] = True
    return keep
