"""VisionZip: dominant + contextual tokens against a plain loop of the official code, checks, a tiny-model run."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import contextual_targets, contextual_tokens, visionzip
from vlm_compress.methods.base import resolve_budget, split_budget
from vlm_compress.methods.visionzip import VisionZip
from vlm_compress.views import Signals, VisualContext
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs


def cosine(x: torch.Tensor, i: int, j: int) -> float:
    a, b = x[i].double(), x[j].double()
    if not bool(a.any()) or not bool(b.any()):
        return 0.0
    if torch.equal(x[i], x[j]):
        return 1.0
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def official_loop(attention, metric, values, num_dominant, num_contextual, merge="official"):
    """``CLIPVisionTower_VisionZip.forward`` as plain Python on the patch tokens: the top ``num_dominant`` by
    attention (ties to the lower index) in image order, every ``M // C``-th other token a target, each other
    token merged into its most similar target (ties to the earlier target)."""
    n = attention.numel()
    ranked = sorted(range(n), key=lambda i: (-float(attention[i]), i))
    dominant = sorted(ranked[:num_dominant])
    remaining = [i for i in range(n) if i not in dominant]
    if num_contextual == 0:
        return dominant, [], values[dominant].double()
    step = max(1, len(remaining) // num_contextual)
    targets = [remaining[p] for p in range(0, len(remaining), step)][:num_contextual]
    members = {t: [] for t in targets}
    for i in remaining:
        if i not in targets:
            best = max(range(len(targets)), key=lambda c: (cosine(metric, i, targets[c]), -c))
            members[targets[best]].append(i)
    merged = []
    for t in targets:
        group = values[members[t]].double()
        if merge == "official":
            merged.append(values[t].double() + (group.mean(0) if len(group) else 0.0))
        else:
            merged.append(torch.cat([values[t : t + 1].double(), group]).mean(0))
    return dominant, targets, torch.cat([values[dominant].double(), torch.stack(merged)])


def inputs(seed: int, n: int, dim: int, copies: bool = False):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(n, dim, generator=g)
    if copies:  # every token one of 5 rows: many exact ties between targets
        metric = metric[torch.randint(0, 5, (n,), generator=g)]
    attention = torch.randint(0, 4, (n,), generator=g).float() if copies else torch.rand(n, generator=g)
    return attention, metric, torch.randn(n, 6, generator=g)


@pytest.mark.parametrize(("n", "seed", "copies"), [(12, 0, False), (36, 1, False), (64, 2, True), (50, 3, True)])
@pytest.mark.parametrize("merge", ["official", "mean"])
def test_selection_and_merge_match_the_official_loop(n, seed, copies, merge):
    attention, metric, values = inputs(seed, n, 5, copies)
    for num_dominant, num_contextual in [(0, 1), (1, 0), (5, 2), (n // 2, n // 4), (0, n), (n - 3, 3)]:
        dominant, targets, assignment = visionzip(attention, metric, num_dominant, num_contextual)
        expected_dominant, expected_targets, expected_values = official_loop(
            attention, metric, values, num_dominant, num_contextual, merge
        )
        assert dominant.tolist() == expected_dominant and targets.tolist() == expected_targets
        merged = contextual_tokens(values, targets, assignment, merge) if num_contextual else values[:0]
        got = torch.cat([values[dominant], merged])
        torch.testing.assert_close(got.double(), expected_values, rtol=1e-6, atol=1e-6)


def test_contextual_targets_are_evenly_spaced_from_the_first():
    assert contextual_targets(522, 10).tolist() == list(range(0, 522, 52))[:10]
    assert contextual_targets(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert contextual_targets(7, 3).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match=r"num_contextual must lie in 1..4"):
        contextual_targets(4, 5)


def test_every_token_is_dominant_or_in_exactly_one_contextual_group():
    attention, metric, _ = inputs(5, 40, 4)
    dominant, targets, assignment = visionzip(attention, metric, 10, 6)
    assert (assignment[dominant] == -1).all() and (assignment >= 0).sum() == 30
    assert assignment[targets].tolist() == list(range(6))


def test_split_follows_the_papers_ratio_at_every_reported_budget():
    method = VisionZip()
    assert [method.split(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert resolve_budget(method.budget, 576) == 64 and method.order == "selection"
    assert VisionZip(contextual_ratio=0.0).split(16) == (16, 0)
    assert VisionZip(contextual_ratio=1.0).split(16) == (0, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"contextual_ratio": 1.5}, r"visionzip: contextual_ratio must lie in \[0, 1\] \(the paper uses 10 / 64\)"),
        ({"contextual_ratio": "0.2"}, r"visionzip: contextual_ratio must lie in \[0, 1\]"),
        ({"metric": "queries"}, r"visionzip: metric must be 'keys', 'vision' or 'projected', got 'queries'"),
        ({"merge": "sum"}, r"visionzip: merge must be 'official' or 'mean', got 'sum'"),
        ({"order": "sideways"}, r"visionzip: order must be one of"),
    ],
)
def test_hyperparameters_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vlmc.get_method("visionzip", **kwargs)


def test_method_returns_dominant_then_contextual_merged_features():
    attention, vision, projected = inputs(6, 36, 5)
    signals = {"vision_features": lambda: vision, "cls_attention": lambda: attention}
    ctx = VisualContext(features=projected, grid=(6, 6), signals=Signals(signals))
    selection = VisionZip(budget=16).select(ctx)  # 16 * 10/64 = 2.5 -> 2 contextual, 14 dominant
    dominant, targets, expected = official_loop(attention, vision, projected, 14, 2)
    assert selection.kept_indices.tolist() == dominant + targets
    # no key-state signal here (as on Qwen or SigLIP towers): the feature-layer states, and the info says so
    assert selection.info == {
        "dominant": 14,
        "contextual": 2,
        "metric": "vision",
        "cls_tokens": 0,  # no [CLS] signal (as on SigLIP or Qwen towers): all 14 dominant tokens are patches
        "cls": "no cls_tokens signal (no [CLS] token, or it is one of the tokens): patches only",
    }
    torch.testing.assert_close(selection.features.double(), expected, rtol=1e-6, atol=1e-6)
    selection.validate(36, 6, method="visionzip")
    assert (selection.groups >= 0).all()  # nothing is dropped: every token is kept or merged
    assert selection.groups[torch.tensor(dominant)].tolist() == list(range(14))
    projected_metric = VisionZip(budget=16, metric="projected").select(ctx)
    assert projected_metric.kept_indices.tolist() == dominant + official_loop(attention, projected, projected, 14, 2)[1]
    assert torch.equal(VisionZip(budget=1.0).select(ctx).kept_indices, torch.arange(36))


def run_visionzip(model, inputs, method):
    """The image's record and context, and the language model's input embeddings, of one patched forward."""
    seen, embeds = {}, []

    class Spy(VisionZip):
        def select(self, ctx):
            seen["ctx"] = ctx
            return super().select(ctx)

    probe = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"].detach()), with_kwargs=True
    )
    try:
        with vlmc.compress(model, Spy(**method.hyperparameters())) as run:
            model(**inputs)
    finally:
        probe.remove()
    return run, seen["ctx"], embeds[0]


@torch.no_grad()
def projected_cls(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[passes, D]`` the tower's feature-layer [CLS] state of every pass through the model's projector, computed
    here from the tower's own ``output_hidden_states`` (as the official ``hidden_states[-2][:, 0]``)."""
    states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return model.model.multi_modal_projector(states[model.config.vision_feature_layer][:, 0])


def image_rows(embeds: torch.Tensor, inputs: dict, model) -> torch.Tensor:
    """The language model's input rows that hold the image: those not equal to a text token's embedding."""
    ids = inputs["input_ids"][0]
    text = model.get_input_embeddings()(ids[ids != model.config.image_token_id])
    rows = embeds[0]
    is_text = (rows[:, None, :] == text[None]).all(-1).any(-1)
    return rows[~is_text]


def free_slot(n: int, *taken: list[int]) -> int:
    """The first token of a pass that is neither dominant nor a contextual target: where its [CLS] sits."""
    return min(set(range(n)).difference(*taken))


def test_tiny_llava_run_keeps_the_cls_token_and_feeds_the_official_layout():
    model = build_tiny("llava", seed=9)
    batch = tiny_inputs(model, [1], seed=10)
    run, ctx, embeds = run_visionzip(model, batch, VisionZip(budget=32))
    record = run.report.images[0]
    assert run.report.position_ids == "contiguous" and record.tokens_after == 32
    assert record.selection.info["metric"] == "keys"  # the official similarity space on a CLIP tower
    # 32 = 27 dominant (the [CLS] token + 26 patches, the official dominant - 1) + 5 contextual
    assert record.selection.info["dominant"] == 27 and record.selection.info["cls_tokens"] == 1
    dominant, targets, expected = official_loop(ctx.cls_attention, ctx.vision_keys, ctx.features, 26, 5)
    slot = free_slot(144, dominant, targets)
    assert record.selection.kept_indices.tolist() == [slot] + dominant + targets
    cls = projected_cls(model, batch["pixel_values"])
    assert cls.shape == (1, ctx.dim)
    torch.testing.assert_close(ctx.cls_tokens, cls, rtol=1e-6, atol=1e-6)
    expected = torch.cat([cls.double(), expected])
    torch.testing.assert_close(record.selection.features.double(), expected, rtol=1e-5, atol=1e-5)
    # the language model reads exactly those 32 rows, in that order ([CLS], dominant, contextual), where the image was
    rows = image_rows(embeds, batch, model)
    assert rows.shape[0] == 32
    torch.testing.assert_close(rows.double(), expected, rtol=1e-5, atol=1e-5)
    # keep_cls=False: all 27 dominant tokens are patches (the former behaviour)
    run, ctx, _ = run_visionzip(model, batch, VisionZip(budget=32, keep_cls=False))
    dominant, targets, _ = official_loop(ctx.cls_attention, ctx.vision_keys, ctx.features, 27, 5)
    assert run.report.images[0].selection.kept_indices.tolist() == dominant + targets


def test_visionzip_selects_per_subimage_with_each_passes_cls_on_llava_next():
    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # 40 x 70 px: thumbnail + 2x2 crops
    run, ctx, embeds = run_visionzip(model, inputs, VisionZip(budget=30))
    selection = run.report.images[0].selection
    regions = [ctx.thumbnail, *ctx.crops]
    counts = split_budget(30, [int(region.indices.numel()) for region in regions])
    assert len(regions) == 5 and counts == [6] * 5 and selection.info["per_subimage"] == counts
    # per pass of 6: split(6) = (5, 1), so [CLS] + 4 patches by the pass's own [CLS] attention + 1 contextual
    cls = projected_cls(model, inputs["pixel_values"][0])
    torch.testing.assert_close(ctx.cls_tokens, cls, rtol=1e-6, atol=1e-6)
    blocks = []
    for region in regions:
        index = region.indices
        torch.testing.assert_close(ctx.cls_attention[index], region.cls_attention)
        dominant, targets, assignment = visionzip(ctx.cls_attention[index], ctx.vision_keys[index], 4, 1)
        slot = free_slot(index.numel(), dominant.tolist(), targets.tolist())
        merged = contextual_tokens(ctx.features[index], targets, assignment)
        blocks.append(
            (index[slot : slot + 1], index[dominant], index[targets], ctx.features[index[dominant]], merged)
        )
    # official order: the thumbnail's [CLS], dominant, contextual; then the crops' dominant patches in image order,
    # the crops' [CLS] tokens, the crops' contextual tokens (restore_image_features_sorted)
    crop_dominant = torch.cat([block[1] for block in blocks[1:]])
    order = torch.argsort(crop_dominant)
    kept = torch.cat(
        [*blocks[0][:3], crop_dominant[order], *[b[0] for b in blocks[1:]], *[b[2] for b in blocks[1:]]]
    )
    features = torch.cat(
        [
            cls[:1],
            blocks[0][3],
            blocks[0][4],
            torch.cat([b[3] for b in blocks[1:]])[order],
            cls[1:],
            *[b[4] for b in blocks[1:]],
        ]
    )
    assert selection.kept_indices.tolist() == kept.tolist() and not selection.keep_newlines
    torch.testing.assert_close(selection.features, features, rtol=1e-5, atol=1e-5)
    # exactly the budget reaches the language model, no newline, in the official order: the crops' [CLS] and
    # contextual tokens after all their dominant patches
    rows = image_rows(embeds, inputs, model)
    assert rows.shape[0] == 30
    torch.testing.assert_close(rows, features, rtol=1e-5, atol=1e-5)
    # per_subimage=False with keep_cls=False: the former single selection over all content tokens, with newlines
    run, ctx, embeds = run_visionzip(model, inputs, VisionZip(budget=30, per_subimage=False, keep_cls=False))
    selection = run.report.images[0].selection
    dominant, targets, _ = visionzip(ctx.cls_attention, ctx.vision_keys, *VisionZip().split(30))
    assert selection.kept_indices.tolist() == dominant.tolist() + targets.tolist()
    assert selection.keep_newlines and "per_subimage" not in selection.info
    assert image_rows(embeds, inputs, model).shape[0] > 30  # the kept grid rows' newlines


def test_vision_keys_are_the_feature_blocks_head_mean_keys():
    """``vision_keys`` (LLaVA-1.5's CLIP tower): layer -2's ``k_proj`` of its ``layer_norm1`` input, as its own
    forward computes them (captured from the projection), averaged over heads, [CLS] dropped."""
    model = build_tiny("llava", seed=9)
    batch = tiny_inputs(model, [1], seed=10)
    from vlm_compress.adapters.vision_towers import encoder_layers

    block = encoder_layers(model.model.vision_tower)[-2]
    captured, seen = [], []
    hook = block.self_attn.k_proj.register_forward_hook(lambda module, args, out: captured.append(out.detach()))

    class Spy(VisionZip):
        def select(self, ctx):
            seen.append(ctx.vision_keys.detach())
            return super().select(ctx)

    try:
        with vlmc.compress(model, Spy(budget=32)):
            model(**batch)
    finally:
        hook.remove()
    heads = block.self_attn.num_heads
    expected = captured[0][0, 1:].view(-1, heads, captured[0].shape[-1] // heads).mean(dim=1)
    torch.testing.assert_close(seen[0], expected, rtol=1e-6, atol=1e-6)
