"""lmms-eval's older plugin layout (``LMMS_EVAL_PLUGINS=vlm_compress.eval``): model name -> class name, each class
in ``vlm_compress.eval.models.<name>``. Installed packages use the ``lmms_eval.models`` entry point instead."""

AVAILABLE_MODELS = {"vlmc_llava": "VlmcLlava"}
