"""TAP inserted into timm and open_clip ViTs (needs the ``timm`` extra: timm, open-clip-torch, torchvision)."""

from __future__ import annotations

import pytest
import torch

from vlm_compress.tap import finetune_tap, insert_tap

from .helpers import hook_state

INSTALL = "needs timm and open-clip-torch (with a torchvision matching torch): pip install 'vlm_compress[timm]'"
timm = pytest.importorskip("timm", reason=INSTALL)
open_clip = pytest.importorskip("open_clip", reason=INSTALL)


def tiny_timm_vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5
    ).eval()


def tiny_open_clip():
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=64, patch_size=16, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()


def encode(model, images):
    with torch.no_grad():
        return model.encode_image(images) if hasattr(model, "encode_image") else model(images)


@pytest.fixture(params=["timm", "open_clip"])
def vit(request):
    return tiny_timm_vit() if request.param == "timm" else tiny_open_clip()


def test_identity_tap_is_exact_and_undo_restores_the_instance(vit):
    images = torch.randn(2, 3, 64, 64)
    reference, hooks, keys = encode(vit, images), hook_state(vit), set(vit.state_dict())
    with insert_tap(vit, num_scales=3) as handle:
        assert len(handle.modules) == 2
        assert torch.equal(encode(vit, images), reference)
        assert handle.scale_weights().shape == (2, 16, 3)
    assert hook_state(vit) == hooks and set(vit.state_dict()) == keys
    assert torch.equal(encode(vit, images), reference)


def test_paper_init_changes_outputs(vit):
    images = torch.randn(2, 3, 64, 64)
    reference = encode(vit, images)
    with insert_tap(vit, blocks=[-1], init="paper") as handle:
        assert list(handle.modules) == [1]
        assert not torch.allclose(encode(vit, images), reference)


def test_finetuning_lowers_adl(vit):
    torch.manual_seed(1)
    batch = (torch.randn(8, 3, 64, 64), torch.randint(0, 5, (8,)))
    with insert_tap(vit) as handle:
        history = finetune_tap(handle, [batch] * 12, lr=0.05, threshold=1.0, progress=False)
    assert history[-1] < history[0] - 0.005


def test_finetuning_with_a_task_loss_changes_only_tap():
    vit = tiny_timm_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    batch = (torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,)))

    def classification_loss(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    with insert_tap(vit) as handle:
        history = finetune_tap(handle, [batch] * 3, loss_fn=classification_loss, progress=False)
        assert len(history) == 3 and all(h == h for h in history)
        assert all(tap.gate.item() != 0 for tap in handle.modules.values())
        assert not vit.training
    after = vit.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
