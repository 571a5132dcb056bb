"""What a method sees: signals are computed once, on first read, and are read-only."""

from __future__ import annotations

import pytest
import torch

from vlm_compress.errors import MissingSignalError
from vlm_compress.views import Signals, TokenRegion, VisualContext


def test_signals_are_computed_once_on_first_read_and_cannot_be_set():
    calls = []

    def attention():
        calls.append(1)
        return torch.tensor([0.5, 0.25, 0.25])

    ctx = VisualContext(features=torch.zeros(3, 2), signals=Signals({"cls_attention": attention}, owner="image 0"))
    assert calls == []
    assert torch.equal(ctx.cls_attention, torch.tensor([0.5, 0.25, 0.25]))
    assert ctx.cls_attention is ctx.signals.get("cls_attention") and calls == [1]
    assert ctx.has("cls_attention") and not ctx.has("question")
    with pytest.raises(AttributeError, match="cls_attention is a signal"):
        ctx.cls_attention = torch.zeros(3)
    with pytest.raises(MissingSignalError, match="'question' is not available for image 0; available: cls_attention"):
        ctx.question  # noqa: B018


def test_every_documented_signal_is_an_attribute():
    names = [
        "vision_features", "cls_attention", "cls_attention_logits", "text_embeds", "text_ids", "prompt_text",
        "question", "text_embedder", "padding_mask", "patch_features",
    ]
    ctx = VisualContext(features=torch.zeros(2, 2), signals=Signals({n: (lambda n=n: n) for n in names}))
    assert [getattr(ctx, n) for n in names] == names
    providers = {"cls_attention": lambda: "a", "cls_attention_logits": lambda: "l"}
    region = TokenRegion(indices=torch.arange(2), grid=(1, 2), signals=Signals(providers))
    assert (region.cls_attention, region.cls_attention_logits) == ("a", "l")
