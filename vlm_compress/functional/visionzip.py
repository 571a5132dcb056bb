"""VisionZip: dominant tokens by [CLS] attention, the rest merged into a few contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025, arXiv
2412.04467). Official code: dvlab-research/VisionZip, ``visionzip/clip_encoder.py``
(``CLIPVisionTower_VisionZip.forward``).
"""

from __future__ import annotations

import torch

from .similarity import cosine_similarity
from .topk import topk_indices

MERGES = ("official", "mean")


def contextual_targets(num_remaining: int, num_contextual: int) -> torch.Tensor:
    """Positions (in the list of non-dominant tokens) of the contextual targets: every ``step``-th token from 0,
    ``step = max(1, M // C)``, the first ``C`` of them, as the official code samples them."""
    if not 1 <= num_contextual <= num_remaining:
        raise ValueError(f"num_contextual must lie in 1..{num_remaining}, got {num_contextual}")
    step = max(1, num_remaining // num_contextual)
    return torch.arange(0, num_remaining, step)[:num_contextual]


def visionzip(
    attention: torch.Tensor,
    metric: torch.Tensor,
    num_dominant: int,
    num_contextual: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dominant tokens and the contextual groups of the others.

    1. **Dominant**: the ``num_dominant`` tokens of highest [CLS] ``attention`` (``[N]``; ties to the lower
       index), in ascending index order (the official ``masked_select`` keeps the image order).
    2. **Contextual**: the other ``M`` tokens in image order; ``num_contextual`` of them, evenly spaced
       (:func:`contextual_targets`), are targets, and every other one joins the target it is most similar to
       (cosine of ``metric`` rows, ``[N, Dm]``; ties to the earlier target).

    Returns ``(dominant [num_dominant], targets [num_contextual], assignment [N])``: ``dominant`` and
    ``targets`` are token indices, ascending; ``assignment[i]`` is the contextual group (``0..C-1``) of token
    ``i``, its own group for a target, ``-1`` for a dominant token.
    """
    n = attention.numel()
    if num_dominant < 0 or num_contextual < 0 or num_dominant + num_contextual > n:
        raise ValueError(
            f"num_dominant ({num_dominant}) and num_contextual ({num_contextual}) must be >= 0 and sum to "
            f"at most {n}"
        )
    device = metric.device
    is_dominant = torch.zeros(n, dtype=torch.bool, device=device)
    if num_dominant:
        is_dominant[topk_indices(attention, num_dominant).to(device)] = True
    dominant = torch.nonzero(is_dominant).flatten()
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    if num_contextual == 0:
        return dominant, dominant[:0], assignment
    remaining = torch.nonzero(~is_dominant).flatten()
    target_positions = contextual_targets(remaining.numel(), num_contextual).to(device)
    targets = remaining[target_positions]
    is_target = torch.zeros(remaining.numel(), dtype=torch.bool, device=device)
    is_target[target_positions] = True
    to_merge = remaining[~is_target]
    assignment[targets] = torch.arange(num_contextual, device=device)
    if to_merge.numel():
        # [M - C, C]; copies of a target get bit-identical columns, so a tie between them goes to the earlier
        # target (argmax returns the first maximum)
        similarity = cosine_similarity(metric[to_merge], metric[targets])
        assignment[to_merge] = similarity.argmax(dim=1)
    return dominant, targets, assignment


def contextual_tokens(
    values: torch.Tensor, targets: torch.Tensor, assignment: torch.Tensor, merge: str = "official"
) -> torch.Tensor:
    """``[C, D]`` contextual tokens from ``values [N, D]`` (computed in fp32, returned in ``values``' dtype).

    ``merge="official"``: the target's value plus the mean of the tokens merged into it (the official
    ``target_hidden + aggregated_hidden``, the mean over an empty group being 0); ``merge="mean"``: the mean over
    the target and its merged tokens, an average as the paper describes merging.
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    num_contextual = targets.numel()
    members = assignment >= 0
    members[targets] = False
    groups = assignment[members]
    sums = torch.zeros(num_contextual, values.shape[1], dtype=torch.float32, device=values.device)
    sums.index_add_(0, groups, values[members].float())
    counts = torch.bincount(groups, minlength=num_contextual).unsqueeze(1).float()
    target_values = values[targets].float()
    if merge == "official":
        merged = target_values + sums / counts.clamp_min(1)
    else:
        merged = (target_values + sums) / (counts + 1)
    return merged.to(values.dtype)
