"""``--model vlmc_llava`` under ``LMMS_EVAL_PLUGINS=vlm_compress.eval`` (see :mod:`vlm_compress.eval.lmms_eval_plugin`)."""

from ..lmms_eval_plugin import VlmcLlava

__all__ = ["VlmcLlava"]
