"""Insert TAP (:class:`~vlm_compress.tap.modules.TokenAwareAvgPool`) into the blocks of a pretrained ViT instance.

Supported towers: ``timm`` ``VisionTransformer``, ``open_clip`` ``VisionTransformer`` (or a CLIP model holding
one as ``.visual``), and HuggingFace CLIP/SigLIP vision towers (alone, or inside a LLaVA-style VLM). As in the
paper, each chosen block feeds ``TAP(x)`` to its attention branch and keeps ``x`` on the residual path
(``x = x + attn(norm1(TAP(x)))``); prefix tokens ([CLS], registers) pass through unchanged. The TAP module
is attached to the block as ``block.tap`` (so ``model.to``/``train``/``state_dict`` see it) and called by a
forward pre-hook on the block's first norm; :meth:`TapHandle.remove` takes both away again.

Room: TAP. May import ``errors`` and :mod:`.modules`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AlreadyPatchedError, UnsupportedModelError
from .modules import TokenAwareAvgPool, attention_diversification_loss, square_grid

logger = logging.getLogger(__name__)

AttentionMap = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _timm_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, num_tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    query, key = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((query * attn.scale) @ key.transpose(-2, -1)).softmax(dim=-1)


def _multihead_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    batch, num_tokens, dim = x.shape
    heads = attn.num_heads
    if attn._qkv_same_embed_dim:
        w_query, w_key = attn.in_proj_weight[:dim], attn.in_proj_weight[dim : 2 * dim]
    else:
        w_query, w_key = attn.q_proj_weight, attn.k_proj_weight
    bias = attn.in_proj_bias
    b_query, b_key = (None, None) if bias is None else (bias[:dim], bias[dim : 2 * dim])
    query = F.linear(x, w_query, b_query).view(batch, num_tokens, heads, -1).transpose(1, 2)
    key = F.linear(x, w_key, b_key).view(batch, num_tokens, heads, -1).transpose(1, 2)
    return ((query @ key.transpose(-2, -1)) / math.sqrt(query.shape[-1])).softmax(dim=-1)


def _hf_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, num_tokens, _ = x.shape
    query = attn.q_proj(x).view(batch, num_tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    key = attn.k_proj(x).view(batch, num_tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    return ((query @ key.transpose(-2, -1)) * attn.scale).softmax(dim=-1)


@dataclass
class VitLayout:
    """Where one ViT family keeps what TAP needs."""

    family: str
    blocks: Sequence[nn.Module]
    norm_attr: str  # the norm whose output feeds the attention branch
    attn_attr: str
    num_prefix_tokens: int
    grid: tuple[int, int] | None
    attention_map: AttentionMap
    batch_first: bool = True


def _as_pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def vit_layout(model: nn.Module) -> VitLayout:
    """Find the blocks of a timm / open_clip / HuggingFace ViT (or of the vision tower inside a VLM)."""
    if hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        grid = getattr(model.patch_embed, "grid_size", None)
        return VitLayout(
            "timm",
            list(model.blocks),
            "norm1",
            "attn",
            int(model.num_prefix_tokens),
            None if grid is None else _as_pair(grid),
            _timm_attention,
        )
    visual = getattr(model, "visual", model)
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if resblocks is not None and hasattr(visual, "grid_size"):
        prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
        return VitLayout(
            "open_clip",
            list(resblocks),
            "ln_1",
            "attn",
            prefix,
            _as_pair(visual.grid_size),
            _multihead_attention,
            batch_first=bool(getattr(visual.transformer, "batch_first", True)),
        )
    tower = model
    for path in ("model.vision_tower", "vision_tower"):
        found = model
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, nn.Module):
            tower = found
            break
    body = getattr(tower, "vision_model", tower)
    layers = getattr(getattr(body, "encoder", None), "layers", None)
    embeddings = getattr(body, "embeddings", None)
    if layers is not None and embeddings is not None and hasattr(layers[0], "layer_norm1"):
        config = getattr(body, "config", None) or getattr(tower, "config", None)
        grid = None
        if config is not None and hasattr(config, "image_size") and hasattr(config, "patch_size"):
            grid = (config.image_size // config.patch_size,) * 2
        prefix = 1 if getattr(embeddings, "class_embedding", None) is not None else 0
        return VitLayout("hf", list(layers), "layer_norm1", "self_attn", prefix, grid, _hf_attention)
    raise UnsupportedModelError(
        f"insert_tap: cannot find the transformer blocks of {type(model).__name__}; supported: timm "
        "VisionTransformer, open_clip VisionTransformer / CLIP, HuggingFace CLIP/SigLIP vision towers and "
        "LLaVA-style models holding one"
    )


class TapHandle:
    """TAP modules inserted into one model instance; :meth:`remove` (or leaving the ``with``) undoes it."""

    def __init__(
        self, model: nn.Module, layout: VitLayout, block_indices: list[int], modules: list[TokenAwareAvgPool]
    ):
        self.model, self.layout = model, layout
        self.modules: dict[int, TokenAwareAvgPool] = dict(zip(block_indices, modules, strict=True))
        self._hooks: list[Any] = []
        self._attention_inputs: list[torch.Tensor] | None = None
        self.active = True
        for index, tap in self.modules.items():
            block = layout.blocks[index]
            norm = getattr(block, layout.norm_attr)
            block.tap = tap
            self._hooks.append(norm.register_forward_pre_hook(self._pre_hook(tap)))
            self._hooks.append(norm.register_forward_hook(self._record_hook))

    def _pre_hook(self, tap: TokenAwareAvgPool) -> Callable:
        layout = self.layout

        def apply_tap(_module: nn.Module, args: tuple) -> tuple:
            x = args[0] if layout.batch_first else args[0].transpose(0, 1)
            prefix = layout.num_prefix_tokens
            num_patches = x.shape[1] - prefix
            grid = (
                layout.grid
                if layout.grid and math.prod(layout.grid) == num_patches
                else square_grid(num_patches)
            )
            pooled = torch.cat([x[:, :prefix], tap(x[:, prefix:], grid)], dim=1)
            return (pooled if layout.batch_first else pooled.transpose(0, 1), *args[1:])

        return apply_tap

    def _record_hook(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        if self._attention_inputs is not None:
            self._attention_inputs.append(output if self.layout.batch_first else output.transpose(0, 1))

    def parameters(self) -> Iterable[nn.Parameter]:
        for tap in self.modules.values():
            yield from tap.parameters()

    def attentions(self, forward: Callable[[], Any]) -> tuple[Any, list[torch.Tensor]]:
        """Run ``forward()`` and return its result with the ``[B, heads, N, N]`` attention of every TAP block.

        The attention is recomputed from each block's own query/key weights on its attention input, so the
        model keeps its fused attention kernels.
        """
        self._attention_inputs = []
        try:
            result = forward()
            inputs = self._attention_inputs
        finally:
            self._attention_inputs = None
        blocks = [self.layout.blocks[i] for i in self.modules]
        maps = [
            self.layout.attention_map(getattr(block, self.layout.attn_attr), x)
            for block, x in zip(blocks, inputs, strict=True)
        ]
        return result, maps

    def scale_weights(self) -> torch.Tensor:
        """``[B, P, K]`` scale weights of the last forward, averaged over the TAP blocks (``P`` patch tokens)."""
        recorded = [
            tap.last_scale_weights for tap in self.modules.values() if tap.last_scale_weights is not None
        ]
        if not recorded:
            raise RuntimeError("no TAP block has run yet; call the model first")
        mean = torch.stack(recorded).mean(dim=0)
        return mean.reshape(mean.shape[0], -1, mean.shape[-1])

    def remove(self) -> None:
        if not self.active:
            return
        try:
            for hook in reversed(self._hooks):
                hook.remove()
        finally:
            for index in self.modules:
                block = self.layout.blocks[index]
                if "tap" in block._modules:
                    del block._modules["tap"]
            self._hooks.clear()
            self.active = False

    def __enter__(self) -> TapHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def insert_tap(
    model: nn.Module,
    num_scales: int = 4,
    *,
    blocks: Sequence[int] | None = None,
    temperature: float = 1.0,
    init: str = "identity",
) -> TapHandle:
    """Add a :class:`~vlm_compress.tap.modules.TokenAwareAvgPool` before the attention of every block (or ``blocks``).

    ``init="identity"`` (default) leaves the model's outputs bit-for-bit unchanged until the TAP parameters
    are trained (see :class:`~vlm_compress.tap.modules.TokenAwareAvgPool`); ``init="paper"`` is the paper's module.
    New modules take the dtype and device of their block. Returns a :class:`TapHandle`; ``handle.remove()``
    restores the instance exactly.
    """
    layout = vit_layout(model)
    count = len(layout.blocks)
    indices = list(range(count)) if blocks is None else [int(i) for i in blocks]
    if not indices or any(not -count <= i < count for i in indices):
        raise ValueError(f"blocks must be indices into the model's {count} blocks, got {blocks!r}")
    indices = sorted({i % count for i in indices})
    for i in indices:
        if "tap" in layout.blocks[i]._modules or hasattr(layout.blocks[i], "tap"):
            raise AlreadyPatchedError(f"block {i} already carries a TAP module (or an attribute named 'tap')")
    modules = []
    for i in indices:
        reference = next(layout.blocks[i].parameters())
        dim = getattr(layout.blocks[i], layout.norm_attr).weight.shape[0]
        tap = TokenAwareAvgPool(dim, num_scales, temperature, init=init)
        modules.append(
            tap.to(device=reference.device, dtype=reference.dtype).train(layout.blocks[i].training)
        )
    logger.info("TAP inserted into %d %s block(s): %s", len(indices), layout.family, indices)
    return TapHandle(model, layout, indices, modules)


def finetune_tap(
    handle: TapHandle,
    dataloader: Iterable[Any],
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    adl_weight: float = 1.0,
    threshold: float = 2.0,
    progress: bool = True,
) -> list[float]:
    """Train only the TAP parameters with ``task loss + adl_weight * ADL`` (the paper's weight is 1).

    ``loss_fn(model, batch)`` gives the task loss; without it the model is run on the batch (``batch[0]``
    for tuples/lists, ``**batch`` for dicts) and only the ADL is minimised. Stops after ``steps`` batches or
    one pass over ``dataloader``. Every other parameter is frozen during training and the model's
    ``requires_grad`` flags and train/eval modes are restored afterwards. Returns the ADL of every step.
    """
    from tqdm.auto import tqdm

    if not handle.active:
        raise RuntimeError("finetune_tap: this TAP handle was removed")
    model = handle.model
    trainable = list(handle.parameters())
    tap_ids = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    history: list[float] = []

    def run(batch: Any) -> Any:
        if isinstance(batch, dict):
            return model(**batch)
        return model(batch[0] if isinstance(batch, (tuple, list)) else batch)

    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in tap_ids)
        for tap in handle.modules.values():
            tap.train()
        bar = tqdm(dataloader, total=steps, desc="TAP fine-tuning", disable=not progress)
        for step, batch in enumerate(bar):
            if steps is not None and step >= steps:
                break
            task, attentions = handle.attentions(lambda b=batch: loss_fn(model, b) if loss_fn else run(b))
            adl = attention_diversification_loss(attentions, threshold)
            loss = adl_weight * adl + (task if loss_fn else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(adl.item())
            bar.set_postfix(adl=f"{history[-1]:.4f}")
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
        optimizer.zero_grad(set_to_none=True)
    return history


def recorded_scale_weights(vision_tower: nn.Module) -> torch.Tensor | None:
    """``[I, P, K]`` scale weights of the tower's last forward, averaged over its TAP modules (``P`` patch
    tokens per image); ``None`` when the tower carries no TAP module that has run. For adapters: the ``tap``
    compressor reads row ``i`` as the ``tap_scale_weights`` signal of image ``i``."""
    recorded = [
        m.last_scale_weights
        for m in vision_tower.modules()
        if isinstance(m, TokenAwareAvgPool) and m.last_scale_weights is not None
    ]
    if not recorded or any(r.shape != recorded[0].shape for r in recorded):
        return None
    mean = torch.stack(recorded).mean(dim=0)
    return mean.reshape(mean.shape[0], -1, mean.shape[-1])
