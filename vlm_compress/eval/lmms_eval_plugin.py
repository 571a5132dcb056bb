"""lmms-eval model class ``vlmc_llava``: any supported checkpoint, its visual tokens compressed by vlm_compress.

    lmms_eval --model vlmc_llava --model_args pretrained=PATH,method=uniform,budget=64 --tasks pope

``model_args``: ``pretrained`` (a checkpoint folder or hub id; ``shapes`` for the embedded model), ``method``
(a registered method, or ``none`` for the uncompressed model), ``budget`` (tokens per image, or a fraction in
(0, 1]), ``dtype`` (default ``float32``), ``batch_size``; any other argument is passed to the method as a
hyper-parameter. lmms-eval finds the class through the ``lmms_eval.models`` entry point
(:func:`vlm_compress.eval.models.manifests`) or, without installing vlm_compress, through
``LMMS_EVAL_PLUGINS=vlm_compress.eval`` (:mod:`vlm_compress.eval.models`).
Under ``accelerate launch -m lmms_eval`` every process loads one model on its own device and lmms-eval shards
the requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

try:
    from lmms_eval.api.model import lmms
    from loguru import logger as eval_logger  # lmms-eval's own log, so the summary shows beside its output
except ImportError as err:  # only lmms-eval imports this module
    raise ImportError("the vlmc_llava model class needs lmms-eval: pip install lmms-eval") from err

from ..patching import patch
from ..zoo import load
from .prompts import conversation

MODEL_NAME = "vlmc_llava"
NO_COMPRESSION = "none"


class VlmcLlava(lmms):
    """A vision-language checkpoint patched with one vlm_compress method for the whole evaluation."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "shapes",
        method: str = NO_COMPRESSION,
        budget: int | float = 64,
        dtype: str = "float32",
        batch_size: int | str = 1,
        device: str | None = None,
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        accelerator = Accelerator()
        self.accelerator = accelerator
        self._device = torch.device(device) if device else accelerator.device
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        self.batch_size_per_gpu = int(batch_size)
        model, processor = load(str(pretrained), dtype=dtype, device=self._device)
        self._model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.method = method
        self.handle = None
        if method != NO_COMPRESSION:
            self.handle = patch(self._model, method, budget=budget, processor=processor, **method_kwargs)
        self.tokens_before = 0
        self.tokens_after = 0

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME} answers generate_until tasks only (no loglikelihood)")

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} answers single-round generate_until tasks only")

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy (unless the task asks to sample) answers, batched by identical generation settings."""
        from tqdm.auto import tqdm

        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_NAME} {self.method}")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, answer in zip(chunk, self._generate([requests[i] for i in chunk]), strict=True):
                    answers[index] = answer
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answer)
                bar.update(len(chunk))
        bar.close()
        if self.handle is not None and self.tokens_before:
            eval_logger.info(
                f"{MODEL_NAME} {self.method}: {self.tokens_after} of {self.tokens_before} visual tokens kept "
                f"({100 * self.tokens_after / self.tokens_before:.1f}%)"
            )
        return answers

    def _generate(self, requests: Sequence[Any]) -> list[str]:
        contexts, images = [], []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1:
                raise ValueError(f"{MODEL_NAME} evaluates one image per question; {task} doc {doc_id} has {len(visuals)}")
            contexts.append(conversation(context, model_type=self.model.config.model_type, processor=self.processor))
            images.append(visuals[0].convert("RGB"))
        settings = dict(requests[0].args[1])
        until = settings.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(settings.get("temperature") or 0)
        generation = dict(
            max_new_tokens=int(settings.get("max_new_tokens", 128)),
            do_sample=temperature > 0,
            num_beams=int(settings.get("num_beams", 1)),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if temperature > 0:
            generation.update(temperature=temperature, top_p=settings.get("top_p"))
        previous = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.processor(images=images, text=contexts, return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = previous
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generation)
        if self.handle is not None:
            report = self.handle.report
            self.tokens_before += report.tokens_before
            self.tokens_after += report.tokens_after
            report.clear()  # keep memory flat over a long evaluation
        texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [_cut(text, until).strip() for text in texts]


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text

