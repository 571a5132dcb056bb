"""How lmms-eval finds the ``vlmc_llava`` model class (:mod:`vlm_compress.eval.lmms_eval_plugin`).

- Installed vlm_compress: the ``lmms_eval.models`` entry point ``vlmc_llava = "vlm_compress.eval.models:manifests"``.
- Source checkout: ``LMMS_EVAL_PLUGINS=vlm_compress.eval`` reads :data:`AVAILABLE_MODELS` (model name -> class
  name, the class in ``vlm_compress.eval.models.<name>``).
"""

from __future__ import annotations

from typing import Any

AVAILABLE_MODELS = {"vlmc_llava": "VlmcLlava"}


def manifests() -> Any:
    """Payload of the ``lmms_eval.models`` entry point (lmms-eval is imported only when it asks)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, simple_class_path=f"vlm_compress.eval.lmms_eval_plugin.{cls}")
        for name, cls in AVAILABLE_MODELS.items()
    ]
