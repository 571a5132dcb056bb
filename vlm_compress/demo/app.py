"""The demo's logic, free of any UI: ask a question with and without compression, draw what was kept.

:class:`Demo` wraps one model and its processor. Every public method validates its inputs and raises
:class:`DemoInputError` with a message meant for the page; the Gradio layer (:mod:`.ui`) only shows it.
The model is patched inside a ``with vlmc.compress(...)`` block, so a failed request never leaves it patched.
"""

from __future__ import annotations

import ast
import io
import threading
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import vlm_compress as vlmc

from .. import images, viz
from ..bench import LanguageModelTimer, cache_bytes
from ..engine.cache_compat import output_cache
from ..errors import InvalidImageError
from ..zoo.inputs import prompt_inputs
from ..zoo.settings import Setting

# fields every method has; the others are shown as editable hyper-parameters
_COMMON_FIELDS = ("budget", "order")


class DemoInputError(ValueError):
    """A request the demo cannot serve; the message is shown in the page as is."""


@dataclass
class Answer:
    """One generation: the text and what it cost."""

    text: str
    prefill_ms: float
    visual_tokens: int
    positions: int
    kv_cache_bytes: int
    selection_ms: float = 0.0


@dataclass
class Outcome:
    """Everything the page shows for one question."""

    full: Answer
    compressed: Answer
    view: Image.Image
    overlay: Image.Image
    heatmap: Image.Image | None
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.full.prefill_ms / self.compressed.prefill_ms

    def stats_rows(self) -> list[list[str]]:
        full, comp = self.full, self.compressed
        return [
            ["visual tokens", str(full.visual_tokens), str(comp.visual_tokens)],
            ["language-model positions", str(full.positions), str(comp.positions)],
            ["prefill ms (language model)", f"{full.prefill_ms:.1f}", f"{comp.prefill_ms:.1f}"],
            ["prefill speedup ×", "1.00", f"{self.speedup:.2f}"],
            ["KV cache KiB", f"{full.kv_cache_bytes / 1024:.1f}", f"{comp.kv_cache_bytes / 1024:.1f}"],
            ["selection ms", "–", f"{comp.selection_ms:.2f}"],
        ]


def load_image(value: Any, *, max_side: int = 1024) -> tuple[Image.Image, list[str]]:
    """An RGB image from a path, bytes, a PIL image or an ``[H, W, C]`` array; huge images are downscaled.

    Returns the image and notes for the page; raises :class:`DemoInputError` for anything that is not an image.
    """
    notes: list[str] = []
    if value is None:
        raise DemoInputError("Please upload an image or pick an example scene.")
    if isinstance(value, dict) and "path" in value:  # a Gradio FileData payload
        value = value["path"]
    if hasattr(value, "name") and not isinstance(value, (str, Path, Image.Image)):
        value = value.name
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value.astype(np.uint8))
    if not isinstance(value, (str, Path, bytes, bytearray, Image.Image)):
        raise DemoInputError(f"Expected an image, got {type(value).__name__}.")
    label = repr(Path(value).name) if isinstance(value, (str, Path)) else "The upload"
    try:
        image = images.load_image(value, name=label)
    except InvalidImageError as err:  # the library's message names the file and what is allowed
        raise DemoInputError(f"{str(err)[0].upper()}{str(err)[1:]}.") from None
    if max(image.size) > max_side:
        before = image.size
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.BICUBIC)
        notes.append(f"Image downscaled from {before[0]}×{before[1]} to {image.width}×{image.height}.")
    return image.convert("RGB"), notes


def _split_params(text: str) -> list[str]:
    """``key=value`` chunks separated by commas outside brackets (a value may be a list: ``layers=(2, 6)``)."""
    chunks, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            chunks.append(text[start:i])
            start = i + 1
    chunks.append(text[start:])
    return chunks


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as order=original


class Demo:
    """One model and its processor, served to one request at a time."""

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int = 12, max_side: int = 1024):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.max_side = max_side
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.lock = threading.Lock()
        self.num_visual_tokens = self._count_visual_tokens()

    def _count_visual_tokens(self) -> int:
        probe = self._inputs(Image.new("RGB", (64, 64)), "?")
        return int((probe["input_ids"][0] == self.model.config.image_token_id).sum())

    # ------------------------------------------------------------------ methods and their hyper-parameters
    @staticmethod
    def method_choices() -> list[tuple[str, str]]:
        """``(label, name)`` for every registered method; the label carries its description."""
        return [
            (f"{name} — {text}" if text else name, name) for name, text in vlmc.describe_methods().items()
        ]

    @staticmethod
    def default_params(method: str) -> str:
        """The method's own hyper-parameters with their defaults, as ``key=value, ...``."""
        cls = vlmc.get_method(method).__class__
        parts = []
        for f in fields(cls):
            if f.name in _COMMON_FIELDS or f.default is MISSING:
                continue
            parts.append(f"{f.name}={f.default!r}")
        return ", ".join(parts)

    @staticmethod
    def parse_params(method: str, text: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for chunk in _split_params(text or ""):
            if not chunk.strip():
                continue
            key, sep, value = chunk.partition("=")
            if not sep or not key.strip().isidentifier():
                raise DemoInputError(
                    f"Hyper-parameters are written key=value, separated by commas; got {chunk.strip()!r}."
                )
            params[key.strip()] = _parse_value(value.strip())
        if "budget" in params:
            raise DemoInputError("Set the budget with the slider, not in the hyper-parameters.")
        try:
            vlmc.get_method(method, budget=1, **params)
        except vlmc.UnknownMethodError as err:
            raise DemoInputError(str(err)) from None
        except (TypeError, ValueError) as err:
            raise DemoInputError(f"Bad hyper-parameters for {method}: {err}") from None
        return params

    def check_budget(self, budget: Any) -> int:
        try:
            value = float(budget)
        except (TypeError, ValueError):
            raise DemoInputError(f"The budget must be a number of tokens, got {budget!r}.") from None
        if not value.is_integer() or not 1 <= value <= self.num_visual_tokens:
            raise DemoInputError(
                f"The budget must be a whole number of tokens between 1 and {self.num_visual_tokens}, got {budget}."
            )
        return int(value)

    @staticmethod
    def check_question(question: Any) -> str:
        if not isinstance(question, str) or not question.strip():
            raise DemoInputError("Please type a question about the image.")
        if len(question) > 1000:
            raise DemoInputError("The question is too long (at most 1000 characters).")
        return question.strip()

    # ------------------------------------------------------------------ asking
    def _inputs(self, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
        return prompt_inputs(
            self.processor, image, question, device=self.device, dtype=self.dtype,
            model_type=self.model.config.model_type,
        )

    @torch.inference_mode()
    def _generate(self, inputs: dict[str, torch.Tensor], handle: Any = None) -> Answer:
        with LanguageModelTimer(self.model) as timer:
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, return_dict_in_generate=True
            )
        new_tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
        text = self.processor.decode(new_tokens, skip_special_tokens=True).strip()
        positions = int(inputs["attention_mask"][0].sum())
        visual = self.num_visual_tokens
        selection_ms = 0.0
        if handle is not None and handle.report.calls:
            positions = handle.report.calls[-1].positions_after[0]
            visual = handle.report.tokens_after
            selection_ms = handle.report.selection_ms
        return Answer(
            text=text or "(empty answer)",
            prefill_ms=timer.prefill_ms,
            visual_tokens=visual,
            positions=positions,
            kv_cache_bytes=cache_bytes(output_cache(out)),
            selection_ms=selection_ms,
        )

    def _compressed(self, inputs: dict[str, torch.Tensor], setting: Setting):
        try:
            with setting.compress(self.model, processor=self.processor) as run:
                answer = self._generate(inputs, run)
        except vlmc.VlmcError as err:
            raise DemoInputError(f"{setting.method} cannot run on this input: {err}") from None
        return answer, run.report.images[0] if run.report.images else None

    def ask(self, image: Any, question: Any, method: str, budget: Any, params: str | None = "") -> Outcome:
        """Answer ``question`` about ``image`` with the full model and with ``method`` at ``budget`` tokens."""
        image, notes = load_image(image, max_side=self.max_side)
        question = self.check_question(question)
        budget = self.check_budget(budget)
        hyper = self.parse_params(method, params)
        with self.lock:
            inputs = self._inputs(image, question)
            full = self._generate(inputs)
            compressed, record = self._compressed(inputs, Setting.of(method, budget, **hyper))
        view = _for_display(viz.model_view(image, self.processor))
        overlay, heatmap = view, None
        panels = viz.record_overlays(image, self.processor, record, self.model.config)
        if len(panels) == 1:
            overlay = _for_display(panels[0][1])
            if record.selection.scores is not None:
                heatmap = viz.score_heatmap(view, record.grid, record.selection.scores)
        elif panels:  # AnyRes: the thumbnail and every crop
            overlay = viz.panel_grid(panels, columns=min(len(panels), 3), height=view.height)
        elif record is not None:
            notes.append("This model's tokens do not form one grid; no overlay is drawn.")
        return Outcome(
            full=full, compressed=compressed, view=view, overlay=overlay, heatmap=heatmap, notes=notes
        )

    def sweep_budgets(self, count: int = 6) -> list[int]:
        """``count`` budgets from ~3% of the tokens to all of them, roughly evenly spaced in log scale."""
        values = np.geomspace(max(1, self.num_visual_tokens // 32), self.num_visual_tokens, count)
        return sorted({int(round(v)) for v in values})

    def sweep(
        self,
        image: Any,
        question: Any,
        method: str,
        params: str | None = "",
        budgets: list[int] | None = None,
    ) -> tuple[list[list[str]], Image.Image]:
        """Ask at several budgets: table rows ``[budget, answer, same as full?, prefill ms, speedup]`` and a plot."""
        image, _ = load_image(image, max_side=self.max_side)
        question = self.check_question(question)
        hyper = self.parse_params(method, params)
        budgets = [self.check_budget(b) for b in (budgets or self.sweep_budgets())]
        with self.lock:
            inputs = self._inputs(image, question)
            full = self._generate(inputs)
            answers = [self._compressed(inputs, Setting.of(method, b, **hyper))[0] for b in budgets]
        rows = [
            [
                str(b),
                a.text,
                "yes" if a.text == full.text else "no",
                f"{a.prefill_ms:.1f}",
                f"{full.prefill_ms / a.prefill_ms:.2f}",
            ]
            for b, a in zip(budgets, answers)
        ]
        return rows, _sweep_plot(budgets, answers, full, method)


def _for_display(view: Image.Image, min_side: int = 336) -> Image.Image:
    """Small model inputs (tiny test models see 96 px) scaled up so every token cell stays visible."""
    if min(view.size) >= min_side:
        return view
    scale = -(-min_side // min(view.size))
    return view.resize((view.width * scale, view.height * scale), Image.NEAREST)


def _sweep_plot(budgets: list[int], answers: list[Answer], full: Answer, method: str) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    axis.plot(budgets, [a.prefill_ms for a in answers], marker="o", label=f"{method} prefill")
    axis.axhline(full.prefill_ms, color="grey", linestyle="--", label="full prefill")
    for b, a in zip(budgets, answers):
        same = a.text == full.text
        axis.annotate(
            "✓" if same else "✗",
            (b, a.prefill_ms),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            color="green" if same else "red",
        )
    axis.set_xscale("log")
    axis.set_xlabel("visual tokens kept")
    axis.set_ylabel("language-model prefill ms")
    axis.set_title("latency vs budget (✓: same answer as the full model)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
