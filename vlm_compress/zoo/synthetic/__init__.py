"""Random-weight models built from configs, and processors for them: the one factory of toy models that tests,
``vlmc bench``, ``vlmc run``, the demo and the evaluation use.

- :mod:`.tiny`: tiny models of every supported family (:func:`build_tiny`) and inputs of their processors' shapes
  (:func:`tiny_inputs`);
- :mod:`.processors`: real transformers processors for the tiny models (:func:`tiny_processor`, ...) and the
  character-level :class:`ToyProcessor` (``vlmc run --model tiny``);
- :mod:`.wide`: the real widths of 7B-class models with a few decoder layers (:func:`build_synthetic`,
  ``vlmc bench --synthetic``).

May import torch, transformers, tokenizers and PIL; nothing of vlm_compress outside :mod:`vlm_compress.zoo`.
"""

from .gemma3 import tiny_gemma3_inputs, tiny_gemma3_processor
from .llava_onevision import tiny_onevision_inputs, tiny_onevision_processor
from .processors import (
    TINY_CHAT_TEMPLATE,
    TINY_QWEN_CHAT_TEMPLATE,
    TINY_QWEN_SPECIALS,
    ToyProcessor,
    tiny_next_processor,
    tiny_processor,
    tiny_qwen_processor,
    word_tokenizer,
)
from .qwen3_vl import TINY_DEEPSTACK_LAYERS, tiny_qwen3_processor
from .tiny import (
    BUILDERS,
    INPUTS,
    TINY_GRID_PINPOINTS,
    TINY_IMAGE_TOKEN_ID,
    TINY_NEXT_IMAGE_SIZES,
    TINY_QWEN_GRIDS,
    TINY_QWEN_TOKENS,
    TINY_VOCAB,
    build_tiny,
    qwen_inputs,
    tiny_inputs,
)
from .wide import QWEN_SYNTHETIC_GRID, SYNTHETIC, build_synthetic, synthetic_inputs

__all__ = [
    "BUILDERS",
    "INPUTS",
    "QWEN_SYNTHETIC_GRID",
    "SYNTHETIC",
    "TINY_CHAT_TEMPLATE",
    "TINY_DEEPSTACK_LAYERS",
    "TINY_GRID_PINPOINTS",
    "TINY_IMAGE_TOKEN_ID",
    "TINY_NEXT_IMAGE_SIZES",
    "TINY_QWEN_CHAT_TEMPLATE",
    "TINY_QWEN_GRIDS",
    "TINY_QWEN_SPECIALS",
    "TINY_QWEN_TOKENS",
    "TINY_VOCAB",
    "ToyProcessor",
    "build_synthetic",
    "build_tiny",
    "qwen_inputs",
    "synthetic_inputs",
    "tiny_gemma3_inputs",
    "tiny_gemma3_processor",
    "tiny_inputs",
    "tiny_next_processor",
    "tiny_onevision_inputs",
    "tiny_onevision_processor",
    "tiny_processor",
    "tiny_qwen3_processor",
    "tiny_qwen_processor",
    "word_tokenizer",
]
