"""What a method sees of one image: :class:`VisualContext` (and :class:`TokenRegion` for crops).

A method never touches the model. The adapter hands it the image's visual tokens after the projector plus a
few *signals* that are computed lazily, the first time a method reads them, and cached per image:

========================  ==========================================================================================
``vision_features``       ``[N, Dv]`` the vision encoder's feature-layer outputs for the same tokens (pre-projector)
``cls_attention``         ``[N]`` head-averaged attention of the encoder's [CLS] query at the feature layer
``cls_attention_logits``  ``[N]`` head-averaged pre-softmax logits ``q . k / sqrt(d)`` of that query at the
                          encoder's last block (GlobalCom²'s score), from the same encoder pass
``text_embeds``           ``[T, D]`` the prompt's text tokens (not image, not padding) in the LM embedding space
``text_ids``              ``[T]`` their ids
``prompt_text``           the prompt's text (needs a tokenizer: ``vlmc.compress(..., processor=...)``)
``question``              the text after the image in its prompt, chat-template role markers removed (tokenizer)
``text_embedder``         ``str -> [m, D]``: words tokenised without special tokens, LM input embeddings (tokenizer)
``padding_mask``          ``[N]`` bool, True for the tokens whose patch lies fully in the band the processor padded
                          to make the image square (LLaVA-1.5 pad-to-square; only when the original size is known)
``vision_keys``           ``[N, d]`` head-averaged key states of the encoder block that outputs the feature layer
                          (the LLaVA family's CLIP and SigLIP towers; VisionZip's similarity space)
``cls_tokens``            ``[P, D]`` the encoder's [CLS] token of each of the image's ``P`` encoder passes (LLaVA: 1;
                          LLaVA-NeXT: the thumbnail, then the crops in row-major order) at the feature layer,
                          through the model's projector (CLIP towers with ``vision_feature_select_strategy=
                          "default"``, where [CLS] is not among the tokens; VisionZip keeps it)
``patch_features``        ``[N, u, Dv]`` the ``u`` encoder patches each merged token is made of (Qwen2-VL's 2x2
                          merger input; ``vision_features`` is their concatenation)
========================  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import MissingSignalError


class Signals:
    """Named values computed on first access by adapter-provided callables, then cached.

    ``providers``: name -> zero-argument callable; ``owner`` names the image (or region) in error messages.
    """

    def __init__(self, providers: dict[str, Callable[[], Any]] | None = None, *, owner: str = "this model"):
        self._providers = dict(providers or {})
        self._values: dict[str, Any] = {}
        self._owner = owner

    def has(self, name: str) -> bool:
        return name in self._values or name in self._providers

    def get(self, name: str) -> Any:
        if name not in self._values:
            provider = self._providers.get(name)
            if provider is None:
                available = sorted(set(self._providers) | set(self._values)) or ["none"]
                raise MissingSignalError(
                    f"signal {name!r} is not available for {self._owner}; available: {', '.join(available)}"
                )
            self._values[name] = provider()
        return self._values[name]


class signal:
    """A read-only attribute that returns the lazily computed signal of its own name:
    ``ctx.cls_attention`` is ``ctx.signals.get("cls_attention")`` (a clear error names what is available)."""

    def __init__(self, doc: str = "") -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.signals.get(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is a signal, computed by the adapter; it cannot be set")


@dataclass
class TokenRegion:
    """A structured part of an image's tokens, e.g. the thumbnail or one high-resolution crop (LLaVA-NeXT).

    Attributes:
        indices: ``[n]`` positions of the region's tokens in the image's flat token list.
        grid: ``(h, w)`` of the region's token grid (row-major, ``h * w == n`` unless ``valid`` is given).
        position: ``(row, col)`` of a crop in the crop layout; ``None`` for the thumbnail.
        valid: optional ``[h, w]`` bool mask of the un-padded tokens (AnyRes pads crops to a square).
    """

    indices: torch.Tensor
    grid: tuple[int, int]
    position: tuple[int, int] | None = None
    valid: torch.Tensor | None = None
    signals: Signals = field(default_factory=Signals, repr=False)

    cls_attention = signal("``[n]`` head-averaged [CLS] attention of this region's own encoder pass.")
    cls_attention_logits = signal(
        "``[n]`` head-averaged pre-softmax [CLS] logits of this region's own pass, at the encoder's last block."
    )


@dataclass
class VisualContext:
    """One image's visual tokens and the lazily computed signals a method may ask for.

    Attributes:
        features: ``[N, D]`` visual tokens after the projector (the language model's embedding space).
        grid: ``(h, w)`` when the ``N == h * w`` tokens form a row-major grid, else ``None`` (e.g. with
            ``vision_feature_select_strategy="full"``, where [CLS] leads the patches; spatial methods then
            fall back to 1-D layouts).
        image_index: index of the image among the call's images (batch order).
        row: batch row (prompt) that holds the image.
        thumbnail / crops: structure of AnyRes images (LLaVA-NeXT); ``None`` elsewhere.
        model_type: the model's ``config.model_type`` (``"llava"``, ``"qwen2_vl"``, ...), for methods whose
            official defaults differ per model family; ``None`` when unknown.
    """

    features: torch.Tensor
    grid: tuple[int, int] | None = None
    image_index: int = 0
    row: int = 0
    thumbnail: TokenRegion | None = None
    crops: list[TokenRegion] | None = None
    model_type: str | None = None
    signals: Signals = field(default_factory=Signals, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def has(self, name: str) -> bool:
        return self.signals.has(name)

    # the signals of the table in this module's docstring
    vision_features = signal("``[N, Dv]`` the vision encoder's feature-layer outputs (pre-projector).")
    cls_attention = signal(
        "``[N]`` head-averaged attention of the encoder's [CLS] query at the feature layer."
    )
    cls_attention_logits = signal(
        "``[N]`` head-averaged pre-softmax [CLS] logits at the encoder's last block."
    )
    text_embeds = signal("``[T, D]`` the prompt's text tokens in the LM embedding space.")
    text_ids = signal("``[T]`` the ids of those text tokens.")
    prompt_text = signal("the prompt's text (needs a tokenizer).")
    question = signal("the text after the image in its prompt, role markers removed (needs a tokenizer).")
    text_embedder = signal("``str -> [m, D]``: words tokenised without special tokens, LM input embeddings.")
    padding_mask = signal("``[N]`` bool: tokens in the band the processor padded (LLaVA-1.5 pad-to-square).")
    patch_features = signal("``[N, u, Dv]`` the encoder patches each merged token is made of (Qwen2-VL).")
    vision_keys = signal("``[N, d]`` head-mean key states of the feature-layer block (CLIP towers).")
    newlines = signal("``[H, D]`` the image's newline tokens, one per grid row (AnyRes layouts).")
    newline_slots = signal(
        "``[H]`` how many content tokens precede each newline in the image's block (AnyRes)."
    )
    cls_tokens = signal("``[P, D]`` each encoder pass's projected [CLS] token (CLIP towers: thumbnail, crops).")


@dataclass
class LayerContext:
    """What a stage-2 method sees inside the language model, just before decoder layer ``layer`` runs.

    All per-column tensors are ``[B, L]`` over the sequence as it is at that layer (earlier prunes applied).

    Attributes:
        layer: index of the decoder layer that will run on the pruned sequence.
        num_layers: depth of the language model.
        hidden_states: ``[B, L, D]`` input of ``layer``.
        attention: ``[B, L]`` head-averaged attention that the query token (the prompt's last token) gives every
            column at layer ``layer - 1``, recomputed from that layer's queries and keys (rows sum to 1 over the
            valid columns up to the query).
        visual: ``[B, L]`` bool, columns holding visual tokens.
        image_of: ``[B, L]`` long, image index of each visual column (``-1`` elsewhere).
        valid: ``[B, L]`` bool, real (non-padding) columns.
        tokens_before: per image, its visual tokens before any compression (``N``).
        columns: ``[B, L]`` long, the layer-0 column (position in the unpruned sequence) of every column, ``-1``
            for a padding slot added by an earlier prune; ``None`` where the engine does not give it.
        query: ``[B]`` long, index (in this context's columns) of the query token, the prompt's last token;
            ``None`` where the engine does not give it.

    Methods that need more than the last token's row ask lazily (the engine supplies the providers):
    :meth:`query_attention` (attention rows of any query columns, at layer ``layer - 1`` or at ``layer`` itself)
    :attr:`input_embeds` (the language model's input embeddings of the current columns) and :attr:`keys` (layer
    ``layer - 1``'s key states); :attr:`final_norm` is the language model's last norm. A method that
    recycles pruned tokens into merged ones calls :meth:`recycle`; what it computes once per prompt and reuses at
    later pruning layers of the same pass goes into :attr:`scratch`.
    """

    layer: int
    num_layers: int
    hidden_states: torch.Tensor
    attention: torch.Tensor
    visual: torch.Tensor
    image_of: torch.Tensor
    valid: torch.Tensor
    tokens_before: list[int]
    columns: torch.Tensor | None = None
    query: torch.Tensor | None = None
    attention_provider: Callable[[torch.Tensor, str], torch.Tensor] | None = field(default=None, repr=False)
    embeds_provider: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    keys_provider: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    #: the language model's norm after its last layer (what the LM head reads); ``None`` when it has none
    final_norm: Any = field(default=None, repr=False)
    #: ``(row, image)`` -> the merged tokens ``[D]`` a method recycled there, in order (see :meth:`recycle`)
    recycled: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)
    #: image index -> the stage-1 ``Selection`` of that image in this call (its tokens' placement and info)
    selections: dict[int, Any] = field(default_factory=dict, repr=False)
    #: one dict per language-model pass, shared by its pruning layers (what a method computes once per prompt)
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)

    def query_attention(self, queries: torch.Tensor, *, at: str = "previous") -> torch.Tensor:
        """``[B, Q, L]`` head-averaged attention of the query columns ``queries`` (``[B, Q]`` long, indices of
        this context's columns; ``-1``: no query, a zero row) over every column, each query seeing the valid
        columns up to itself.

        ``at="previous"``: from layer ``layer - 1``'s queries and keys (the layer :attr:`attention` comes from);
        ``at="current"``: from layer ``layer``'s own input norm, queries and keys on :attr:`hidden_states`, the
        attention that layer would compute before any token is dropped (PyramidDrop's ranking).
        """
        if at not in ("previous", "current"):
            raise ValueError(f"query_attention: at must be 'previous' or 'current', got {at!r}")
        if self.attention_provider is None:
            raise MissingSignalError("this layer context carries no multi-query attention")
        return self.attention_provider(queries, at)

    @property
    def input_embeds(self) -> torch.Tensor:
        """``[B, L, D]`` the language model's input embeddings (layer-0 hidden states) of the current columns."""
        if self.embeds_provider is None:
            raise MissingSignalError("this layer context carries no input embeddings")
        return self.embeds_provider()

    @property
    def keys(self) -> torch.Tensor:
        """``[B, L, H_kv * head_dim]`` layer ``layer - 1``'s key states of every column (key projection, key norm,
        rotary embedding; heads concatenated), computed on first use."""
        if self.keys_provider is None:
            raise RuntimeError(
                "this LayerContext carries no key states (the engine captured no attention input)"
            )
        if "_keys" not in self.__dict__:
            self.__dict__["_keys"] = self.keys_provider()
        return self.__dict__["_keys"]

    def recycle(self, row: int, image: int, vector: torch.Tensor) -> None:
        """Add a merged token ``vector`` ``[D]`` to ``image`` in ``row``: it enters the next layer right after the
        image's kept visual tokens (after the ones recycled before it), where SparseVLM's official code inserts
        them. It occupies one of the image's dropped slots (see :meth:`recycled_slots`)."""
        if not bool((self.image_of[row] == image).any()):
            raise ValueError(f"recycle: image {image} has no visual column in row {row}")
        if vector.shape != self.hidden_states.shape[-1:]:
            raise ValueError(
                f"recycle: a merged token must be [{self.hidden_states.shape[-1]}], got {tuple(vector.shape)}"
            )
        self.recycled.setdefault((row, image), []).append(vector)

    def recycled_slots(self, keep: torch.Tensor) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
        """Where the recycled tokens go, given the method's visual ``keep`` mask ``[B, L]``.

        Returns the mask of the columns that survive and the hidden state each rewritten ``(row, column)`` gets.
        An image with ``k`` kept tokens and ``r`` recycled ones keeps ``k + r`` of its columns: its kept ones and
        the ``r`` dropped ones right after its last kept token. Where fewer than ``r`` columns follow that token,
        the dropped columns nearest before it make up the rest, and the kept tokens behind them move back one
        slot each, so the kept tokens stay in their order and the recycled ones come after all of them (they take
        those slots' position ids and causal order). A slot count the image cannot hold is an error.
        """
        keep = keep.clone()
        writes: dict[tuple[int, int], torch.Tensor] = {}
        for (row, image), vectors in self.recycled.items():
            columns = self.image_columns(row, image)
            kept = keep[row, columns]
            if len(vectors) > int((~kept).sum()):
                raise ValueError(
                    f"recycle: image {image} of row {row} drops {int((~kept).sum())} tokens but recycles "
                    f"{len(vectors)}"
                )
            last = int(torch.nonzero(kept).max()) if bool(kept.any()) else -1
            order = torch.arange(columns.numel(), device=columns.device)
            after = order[~kept & (order > last)][: len(vectors)]
            short = len(vectors) - after.numel()
            before = order[~kept & (order < last)]
            before = before[before.numel() - short :] if short else before[:0]
            slots = columns[torch.cat([order[kept], before, after]).sort().values].tolist()
            sources = columns[kept].tolist() + [None] * len(vectors)  # kept tokens in order, then the merged
            merged = iter(vectors)
            for slot, source in zip(slots, sources):
                if source is None:
                    writes[(row, slot)] = next(merged)
                elif source != slot:  # a kept token moved back to make room
                    writes[(row, slot)] = self.hidden_states[row, source]
            keep[row, torch.tensor(slots, device=keep.device)] = True
        return keep, writes

    def image_columns(self, row: int, image: int) -> torch.Tensor:
        """Columns of ``row`` that hold tokens of ``image`` (ascending)."""
        return torch.nonzero(self.image_of[row] == image).flatten()

    def images(self) -> list[tuple[int, int]]:
        """``(row, image)`` pairs present at this layer."""
        pairs = torch.nonzero(self.image_of >= 0)
        seen = {(int(b), int(self.image_of[b, c])) for b, c in pairs}
        return sorted(seen, key=lambda pair: pair[1])
