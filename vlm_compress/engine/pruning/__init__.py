"""Pruning inside the language model (stage 2: FastV, ToDRE), shared by every adapter.

Plain hooks on one model instance, no eager attention needed:

* before layer ``K - 1``'s self-attention, the one attention row a method needs (the prompt's last token against
  every column) is recomputed from that layer's own queries and keys with rotary applied, so SDPA/FlashAttention
  keep running (:mod:`.attention`);
* before layer ``K``, the method decides which visual columns survive; the hidden states are gathered to the
  survivors, and every later layer receives matching position embeddings, position ids and attention mask, so
  layers ``>= K`` really run on fewer positions and store a shorter KV cache (:mod:`.hooks`);
* during decoding, each pruned layer's mask is mapped onto its shorter cache (:mod:`.masks`). ``DynamicCache``
  then holds different lengths per layer; ``get_seq_length()`` reads layer 0, so generation keeps its bookkeeping
  in the unpruned coordinates;
* a method with a decode-cache policy (:meth:`~vlm_compress.methods.base.Method.decode_cache_start`, MustDrop's
  decoding stage) has the prefill's caches of the layers from that start up to its last pruning layer cut to the
  last pruning layer's columns; ``generate`` without a cache masks the generated tokens' queries there off the
  visual columns dropped by then (the selection reads prompt tokens only, so it is the same at every step).

Rows that keep different numbers of columns are re-padded (on the side the prompt was padded); a padding slot
attends only to itself, so no NaN can leak through a masked value.

Room: the engine. ``attention`` and ``masks`` are pure tensor functions (they import nothing from vlm_compress
but ``errors``); ``hooks`` may import ``context`` (``LayerContext``) and ``engine.state``.
"""

from .hooks import PRUNING_ATTENTION, LanguageModelPruner

__all__ = ["PRUNING_ATTENTION", "LanguageModelPruner"]
