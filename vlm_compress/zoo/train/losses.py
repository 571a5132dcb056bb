"""The guided training loss of the embedded ShapesVQA LLaVA: answers, dense read-outs and attention guidance.

Trained from the answers alone, the tiny LLaVA learns each question template's answer prior and ignores the image
(docs/zoo.md): the look-up it has to discover, "find the tokens of the object the question names among all
visual tokens and read one attribute from them", gets almost no gradient while attention is near uniform. The
generator knows everything the look-up needs, so training spells it out with three pieces of scaffolding; the
saved checkpoint is an ordinary ``LlavaForConditionalGeneration`` and none of them runs at inference:

- **Dense read-outs** on the vision tower's patch tokens (the features LLaVA's projector receives): a linear probe
  predicts, per patch, the colour, shape and size of the object under it, its centre's position bin and how many
  objects of the scene share its colour / shape / both (:func:`shapes.patch_targets`). Every question then has
  its answer written in the tokens of the object(s) it refers to.
- **Attention guidance** at the position that predicts the answer: in layer 0, one head is pulled onto the
  question's tokens (``question_weight``); in ``guided_layers``, head 0 onto the patches of the objects the question
  refers to (:attr:`shapes.QA.refs`: the described object, the counted objects, ...; onto ``<s>`` when there is
  none, as for "How many green stars?" with no green star) and, for relations between two objects, head 1 onto
  the second one (``reference_weight``). Each term is ``-log`` of the attention mass on its target.
- **Object-aware token dropout** (``keep_background < 1``): the language model sees every patch an object owns
  plus a random share of the background patches, at their original positions, so a step is cheaper and the
  objects stand out. Training anneals it to 1 (all tokens) well before the end, so the shipped model is not
  trained to expect missing tokens.

The image comes before the question, so the language model's states over ``<s> USER: <image>`` do not depend on
the question: each image's prefix runs once (vision tower, projector, language model; its KV cache stays in the
autograd graph) and all its questions run on top of the cache. With every token kept and zero weights the loss
is exactly the mean answer cross-entropy of the separate (image, question) sequences (tested).

This room holds every loss the training run minimises: the answering stage's :func:`guided_loss` with the weights
of its terms (:class:`Guidance`), and the vision stage's :func:`vision_loss`, with the probe, the read-out, the
token dropout and the reference masks they use.

May import: torch, :mod:`vlm_compress.engine.cache_compat`, :mod:`vlm_compress.zoo.model` and
:mod:`vlm_compress.zoo.shapes`; no other training room.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...engine.cache_compat import cache_keyword, output_cache
from .. import model as zoo_model
from .. import shapes

# Targets read out on object patches only (colour and the centre flag are read everywhere: background is a class).
OBJECT_TARGETS = tuple(name for name in shapes.PATCH_TARGETS if name not in ("colour", "centre"))


@dataclass(frozen=True)
class Guidance:
    """Weights of the scaffolding terms (all 0 and ``keep_background=1``: the plain answer loss)."""

    readout_weight: float = 0.0
    centre_weight: float = 3.0
    question_weight: float = 0.0
    reference_weight: float = 0.0
    guided_layers: tuple[int, ...] = (1, 2)
    keep_background: float = 1.0
    deep_weight: float = 0.0

    @property
    def supervises_attention(self) -> bool:
        return self.question_weight > 0 or self.reference_weight > 0


class PatchProbe(torch.nn.Module):
    """Linear read-out of every :data:`shapes.PATCH_TARGETS` attribute from the patch tokens LLaVA uses."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden_size, classes) for name, classes in shapes.PATCH_TARGETS.items()}
        )

    def forward(self, patch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(patch_tokens) for name, head in self.heads.items()}


def patch_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, grid², hidden]``: the vision tower's features that the projector receives (CLS dropped)."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]


def readout_loss(
    probe: PatchProbe, tokens: torch.Tensor, targets: dict[str, torch.Tensor], centre_weight: float = 3.0
) -> torch.Tensor:
    """Cross-entropy of the probe's read-outs: colour on every patch (background is class 0), the centre flag on
    every patch with positives weighted ``centre_weight``, every other target on the patches objects own."""
    logits = probe(tokens)
    on_object = targets["owner"] > 0
    loss = F.cross_entropy(logits["colour"].flatten(0, 1), targets["colour"].flatten())
    for name in OBJECT_TARGETS:
        if on_object.any():
            loss = loss + F.cross_entropy(logits[name][on_object], targets[name][on_object])
    weight = torch.tensor([1.0, centre_weight], device=tokens.device)
    return loss + F.cross_entropy(logits["centre"].flatten(0, 1), targets["centre"].flatten(), weight=weight)


def keep_mask(
    owner: torch.Tensor, keep_background: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, grid²]`` bool: every patch an object owns (``owner > 0``) and each background patch with probability
    ``keep_background`` (all patches when it is 1)."""
    if keep_background >= 1.0:
        return torch.ones_like(owner, dtype=torch.bool)
    draw = torch.rand(owner.shape, generator=generator).to(owner.device)
    return (owner > 0) | (draw < keep_background)


def reference_masks(questions: list[list[shapes.QA]], owner: torch.Tensor) -> torch.Tensor:
    """``[rows, 2, grid²]`` bool: per question (rows in order) and reference group, the patches owned by the
    group's objects; group 1 is empty unless the question relates two objects."""
    rows = []
    for image, qas in enumerate(questions):
        for qa in qas:
            groups = []
            for g in range(2):
                objects = qa.refs[g] if g < len(qa.refs) else ()
                ids = torch.tensor([i + 1 for i in objects], dtype=owner.dtype, device=owner.device)
                groups.append(torch.isin(owner[image], ids))
            rows.append(torch.stack(groups))
    return torch.stack(rows)


def _minus_log_mass(attention: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -torch.log((attention * target).sum(-1) + 1e-6)


def guided_loss(
    model,
    tokenizer,
    images,
    questions: list[list[shapes.QA]],
    targets: dict[str, torch.Tensor] | None = None,
    *,
    guidance: Guidance = Guidance(),
    probe: PatchProbe | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``(loss, parts)`` of one step: the mean cross-entropy of every question's answer and ``</s>`` plus the
    scaffolding terms of ``guidance`` (see the module docstring); ``parts`` holds each term's value.

    ``targets`` (name -> ``[images, grid²]`` tensors of :func:`shapes.patch_targets`, with ``owner``) is needed by
    every scaffolding term; ``probe`` by the read-outs; attention guidance needs the eager attention
    implementation (it reads attention probabilities).
    """
    from transformers import DynamicCache

    config = model.config
    device = next(model.parameters()).device
    needs_targets = (
        guidance.readout_weight > 0 or guidance.supervises_attention or guidance.keep_background < 1
    )
    if needs_targets and targets is None:
        raise ValueError("read-outs, attention guidance and token dropout need the scenes' patch targets")
    if guidance.readout_weight > 0 and probe is None:
        raise ValueError("the read-out loss needs a PatchProbe")
    if guidance.supervises_attention and config._attn_implementation != "eager":
        raise ValueError(
            "attention guidance reads attention probabilities: use attn_implementation='eager' "
            f"(got {config._attn_implementation!r})"
        )
    if guidance.supervises_attention:
        last = config.text_config.num_hidden_layers - 1
        bad = [layer for layer in guidance.guided_layers if not 1 <= layer <= last]
        if bad or config.text_config.num_attention_heads < 2:
            raise ValueError(f"guided_layers must lie in 1..{last} and the model needs >= 2 heads, got {bad}")
    targets = {name: value.to(device) for name, value in (targets or {}).items()}
    image_size = config.vision_config.image_size
    grid = (image_size // config.vision_config.patch_size) ** 2
    parts: dict[str, float] = {}
    loss = torch.zeros((), device=device)

    tokens = patch_tokens(model, zoo_model.pixel_values(images, image_size).to(device))
    if guidance.readout_weight > 0:
        readout = readout_loss(probe, tokens, targets, guidance.centre_weight)
        loss = loss + guidance.readout_weight * readout
        parts["readout"] = readout.item()
    features = model.model.multi_modal_projector(tokens)  # [B, grid², D]

    # prefix "<s> user :" + the kept visual tokens (left-aligned, in order, padded), at their original positions
    batch_size = len(images)
    if needs_targets:
        kept = keep_mask(targets["owner"], guidance.keep_background, generator)
    else:
        kept = torch.ones(batch_size, grid, dtype=torch.bool, device=device)
    width = int(kept.sum(1).max())
    order = torch.sort((~kept).int(), dim=1, stable=True).indices[:, :width]  # kept patches first, in order
    valid = torch.gather(kept, 1, order)
    visual = torch.gather(features, 1, order[..., None].expand(-1, -1, features.shape[-1]))
    head_ids = zoo_model.encode_batch(tokenizer, [""], num_image_tokens=0)["input_ids"][0, :-2]  # <s> user :
    heads = len(head_ids)
    embed = model.get_input_embeddings()
    prefix = torch.cat([embed(head_ids.to(device)).expand(batch_size, -1, -1), visual], dim=1)
    prefix_positions = torch.cat(
        [torch.arange(heads, device=device).expand(batch_size, -1), heads + order], dim=1
    )
    prefix_mask = torch.cat(
        [torch.ones(batch_size, heads, dtype=torch.long, device=device), valid.long()], dim=1
    )
    language_model = model.model.language_model
    keyword = cache_keyword(language_model)
    prefix_out = language_model(
        inputs_embeds=prefix,
        attention_mask=prefix_mask,
        position_ids=prefix_positions,
        use_cache=True,
        **{keyword: DynamicCache(config=config.text_config)},
    )
    counts = torch.tensor([len(qas) for qas in questions], device=device)
    cache = DynamicCache(config=config.text_config)
    for layer_idx, layer in enumerate(output_cache(prefix_out).layers):
        cache.update(
            layer.keys.repeat_interleave(counts, dim=0),
            layer.values.repeat_interleave(counts, dim=0),
            layer_idx,
        )

    # the questions on top: "question assistant : answer </s>", right-padded, positions after the full image
    flat = [qa for qas in questions for qa in qas]
    encoded = zoo_model.encode_batch(
        tokenizer, [qa.question for qa in flat], [qa.answer for qa in flat], num_image_tokens=grid
    )
    cut = heads + grid
    input_ids = encoded["input_ids"][:, cut:].to(device)
    labels = encoded["labels"][:, cut:].to(device)
    suffix_mask = encoded["attention_mask"][:, cut:].to(device)
    positions = cut + torch.arange(input_ids.shape[1], device=device).expand(len(flat), -1)
    out = language_model(
        input_ids=input_ids,
        attention_mask=torch.cat([prefix_mask.repeat_interleave(counts, dim=0), suffix_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{keyword: cache},
        output_attentions=guidance.supervises_attention,
        output_hidden_states=guidance.deep_weight > 0,
    )
    logits = model.lm_head(out.last_hidden_state)
    answers = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    loss = loss + answers
    parts["answers"] = answers.item()
    if guidance.deep_weight > 0:
        # deep supervision: the answer read out (final norm + LM head) after each layer from the first guided
        # one to the last but one (hidden_states[l + 1] follows layer l; the last entry is the final output)
        first = min(guidance.guided_layers) if guidance.supervises_attention else 1
        early_states = out.hidden_states[first + 1 : -1]
        deep = torch.zeros((), device=device)
        for hidden in early_states:
            early = model.lm_head(language_model.norm(hidden))
            deep = deep + F.cross_entropy(
                early[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        deep = deep / max(1, len(early_states))
        loss = loss + guidance.deep_weight * deep
        parts["deep"] = deep.item()
    if not guidance.supervises_attention:
        return loss, parts

    rows = torch.arange(len(flat), device=device)
    asking = (labels != -100).int().argmax(dim=1) - 1  # the position whose next token is the answer
    width = prefix.shape[1]
    if guidance.question_weight > 0:
        # the question's tokens: suffix positions before "assistant :"
        span = torch.arange(input_ids.shape[1], device=device)[None] < (asking - 1)[:, None]
        on_question = torch.cat([torch.zeros(len(flat), width, device=device), span.float()], dim=1)
        attention = out.attentions[0][rows, 0, asking]  # [rows, prefix + suffix]
        question = _minus_log_mass(attention, on_question).mean()
        loss = loss + guidance.question_weight * question
        parts["question"] = question.item()
    if guidance.reference_weight > 0:
        refs = reference_masks(questions, targets["owner"])  # [rows, 2, grid²]
        image_of_row = torch.arange(batch_size, device=device).repeat_interleave(counts)
        columns = (
            torch.gather(refs, 2, order[image_of_row][:, None].expand(-1, 2, -1))
            & valid[image_of_row][:, None]
        )
        target = torch.zeros(len(flat), 2, width, device=device)
        target[:, :, heads:] = columns.float()
        target[:, :, 0] = (~columns.any(-1)).float()  # nothing referred to: onto <s>
        has_second = torch.tensor([len(qa.refs) > 1 for qa in flat], device=device)
        reference = torch.zeros((), device=device)
        for layer in guidance.guided_layers:
            attention = out.attentions[layer][rows, :2, asking, :width]  # [rows, 2 heads, prefix]
            terms = _minus_log_mass(attention, target)  # [rows, 2]
            reference = reference + terms[:, 0].mean()
            if has_second.any():
                reference = reference + terms[has_second, 1].mean()
        reference = reference / len(guidance.guided_layers)
        loss = loss + guidance.reference_weight * reference
        parts["reference"] = reference.item()
    return loss, parts


def vision_loss(
    model, probe: PatchProbe, images, targets: dict[str, torch.Tensor], image_size: int, centre_weight=3.0
):
    """Stage-1 loss: :func:`readout_loss` of the probe on the vision tower's patch tokens."""
    device = next(model.parameters()).device
    tokens = patch_tokens(model, zoo_model.pixel_values(images, image_size).to(device))
    return readout_loss(probe, tokens, {k: v.to(device) for k, v in targets.items()}, centre_weight)
