"""functional.keep_top_attended: the in-LLM (stage-2) top-attention selection shared by FastV and ToDRE."""

from __future__ import annotations

import torch

from vlm_compress.functional import keep_top_attended
from vlm_compress.views import LayerContext


def _reference(ctx: LayerContext, keep_count) -> torch.Tensor:
    """The loop FastV and ToDRE ran on a LayerContext before the helper moved to functional/."""
    keep = torch.zeros_like(ctx.visual)
    for row, image in ctx.images():
        columns = ctx.image_columns(row, image)
        k = min(columns.numel(), keep_count(image, columns.numel()))
        if k > 0:
            order = torch.sort(ctx.attention[row, columns].float(), descending=True, stable=True).indices[:k]
            keep[row, columns[order]] = True
    return keep


def test_keeps_the_most_attended_columns_of_each_image_ties_to_the_earlier_column():
    attention = torch.tensor([[0.9, 0.1, 0.3, 0.3, 0.2, 0.5], [0.0, 0.4, 0.4, 0.1, 0.7, 0.2]])
    image_of = torch.tensor([[-1, 0, 0, 0, 0, -1], [-1, 1, 1, 1, 2, 2]])
    keep = keep_top_attended(attention, image_of, lambda image, n: 2 if image < 2 else 1)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [
        [False, False, True, True, False, False],
        [False, True, True, False, True, False],
    ]


def test_counts_are_clipped_and_nothing_is_kept_outside_images():
    attention = torch.rand(2, 7)
    image_of = torch.tensor([[-1, 0, 0, 0, -1, -1, -1], [-1, -1, 1, 1, -1, -1, -1]])
    assert keep_top_attended(attention, image_of, lambda image, n: 99).tolist() == (image_of >= 0).tolist()
    assert not keep_top_attended(attention, image_of, lambda image, n: 0).any()
    assert not keep_top_attended(attention, torch.full((2, 7), -1), lambda image, n: 1).any()


def test_equals_the_layer_context_loop_it_replaced():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch, length = 3, 24
        image_of = torch.randint(-1, 4, (batch, length), generator=generator)
        attention = torch.rand(batch, length, generator=generator).half()  # fp16 rows: ties are common
        ctx = LayerContext(
            layer=1,
            num_layers=4,
            hidden_states=torch.zeros(batch, length, 2),
            attention=attention,
            visual=image_of >= 0,
            image_of=image_of,
            valid=torch.ones(batch, length, dtype=torch.bool),
            tokens_before=[length] * 4,
        )
        count = lambda image, n: (image + n) % 5  # noqa: E731
        assert torch.equal(keep_top_attended(attention, image_of, count), _reference(ctx, count))
