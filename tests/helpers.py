"""Probes shared by the tests."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

from vlm_compress.zoo.synthetic import word_tokenizer  # noqa: F401  (re-exported for the tests)


def hook_state(model: torch.nn.Module) -> dict[str, tuple]:
    """Every hook dict of every submodule, and the instance attributes that could shadow methods."""
    return {
        name: (
            tuple(module._forward_hooks),
            tuple(module._forward_pre_hooks),
            tuple(module._backward_hooks),
            "forward" in module.__dict__,
            "generate" in module.__dict__,
        )
        for name, module in model.named_modules()
    }


class UnpatchedSnapshot:
    """What an unpatched model is and does, to check that a failed (or finished) patch left nothing behind.

    Built before the bad call: it runs ``inputs`` once first (transformers installs its own permanent
    output-capture hooks on a model's first forward), then records every hook, the logits and the greedy
    tokens of ``generate``. :meth:`check` asserts no handle, the same hooks and wrappers, the same logits and the
    same generated tokens. Without ``inputs`` (a model that cannot run, e.g. on ``meta``) only the hooks are compared.
    """

    def __init__(self, model: torch.nn.Module, inputs: dict | None = None, *, max_new_tokens: int = 3):
        self.model, self.inputs, self.max_new_tokens = model, inputs, max_new_tokens
        self.logits = self.tokens = None
        if inputs is not None:
            with torch.no_grad():
                model(**inputs)
                self.logits = model(**inputs).logits
                self.tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        self.hooks = hook_state(model)

    def check(self) -> None:
        import vlm_compress as vlmc

        model = self.model
        assert vlmc.active_handle(model) is None
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert hook_state(model) == self.hooks
        if self.inputs is not None:
            with torch.no_grad():
                assert torch.equal(model(**self.inputs).logits, self.logits)
                tokens = model.generate(**self.inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            assert torch.equal(tokens, self.tokens)
            assert hook_state(model) == self.hooks


def check_undo_round_trip(
    model: torch.nn.Module,
    inputs: dict,
    on_exit: tuple[str, int],
    on_error: tuple[str, int],
    *,
    generate: bool = False,
    max_new_tokens: int = 3,
    after_exit: Any = None,
) -> None:
    """Patch with ``on_exit`` (method, budget) and run (``generate`` or a forward), then with ``on_error`` and
    raise inside the context: after each exit the model is exactly the unpatched one (:class:`UnpatchedSnapshot`).
    ``after_exit`` (no arguments) runs further checks after the first exit."""
    import vlm_compress as vlmc

    snapshot = UnpatchedSnapshot(model, inputs, max_new_tokens=max_new_tokens)
    method, budget = on_exit
    with vlmc.compress(model, method, budget=budget):
        if generate:
            model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            model(**inputs)
    snapshot.check()
    if after_exit is not None:
        after_exit()
    method, budget = on_error
    with pytest.raises(RuntimeError, match="boom"), vlmc.compress(model, method, budget=budget):
        model(**inputs)
        raise RuntimeError("boom")
    snapshot.check()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.model.language_model.layers


class LayerLengths:
    """Records the sequence length every decoder layer processes: ``calls[i][layer]``. Use as a context manager.

    It hooks each layer's ``input_layernorm``, so it sees the hidden states after any pre-hook of the layer
    itself (the in-LLM pruner's) has rewritten them.
    """

    def __init__(self, model: torch.nn.Module):
        self.calls: list[list[int]] = []
        self.handles = [
            layer.input_layernorm.register_forward_pre_hook(self._hook(i))
            for i, layer in enumerate(decoder_layers(model))
        ]

    def _hook(self, index: int):
        def hook(module, args):
            hidden = args[0]
            if index == 0:
                self.calls.append([])
            self.calls[-1].append(hidden.shape[1])

        return hook

    def __enter__(self) -> LayerLengths:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def expand_images(input_ids: torch.Tensor, image_token_id: int, tokens_per_image: int) -> torch.Tensor:
    """``[1, L]`` ids with one ``<image>`` per image -> each ``<image>`` repeated ``tokens_per_image`` times."""
    out = []
    for token in input_ids[0].tolist():
        out += [token] * (tokens_per_image if token == image_token_id else 1)
    return torch.tensor([out])


# --- exact duplicates and the papers' plain greedy loops --------------------------------------------------


def duplicate_rows(
    *dims: int, distinct: int = 64, repeat: int = 9, padded: int = 40, pad: str = "zeros", seed: int = 0
) -> list[torch.Tensor]:
    """Token features full of exact duplicates, one ``[N, D]`` tensor per ``D`` in ``dims``.

    ``distinct`` random rows, each repeated ``repeat`` times at shuffled positions, with a block of ``padded``
    equal rows (``pad="zeros"`` or ``"constant"``, one random row) in the middle; every tensor has its
    duplicates at the same positions. ``N = distinct * repeat + padded``.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(distinct * repeat, generator=g)
    middle = distinct * repeat // 2
    out = []
    for dim in dims:
        rows = torch.randn(distinct, dim, generator=g).repeat(repeat, 1)[order]
        pad_row = torch.zeros(1, dim) if pad == "zeros" else torch.randn(1, dim, generator=g)
        out.append(torch.cat([rows[:middle], pad_row.expand(padded, dim), rows[middle:]]))
    return out


@functools.cache
def _unit(row: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in row))
    return tuple(v / norm for v in row) if norm else row


def _cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(p * q for p, q in zip(_unit(a), _unit(b)))


def plain_k_center(features: torch.Tensor, k: int, first: int) -> list[int]:
    """ToDRE's farthest-point loop in plain Python floats: ``[N, D]`` -> ``k`` indices in selection order.

    ``d(x, y) = 0`` for equal rows, else ``1 - cos(x, y)`` (a zero row has cosine 0 with any other row); each
    step takes the first untaken token with the largest distance to its nearest centre.
    """
    rows = [tuple(row) for row in features.double().tolist()]
    values = {row: index for index, row in enumerate(dict.fromkeys(rows))}
    ids = [values[row] for row in rows]  # the same id for equal rows: distances computed once per pair
    distinct = list(values)
    distance = functools.cache(lambda a, b: 0.0 if a == b else 1.0 - _cosine(distinct[a], distinct[b]))
    chosen, taken = [first], {first}
    nearest = [math.inf] * len(rows)
    while len(chosen) < k:
        centre = ids[chosen[-1]]
        nearest = [min(d, distance(i, centre)) for d, i in zip(nearest, ids)]
        best = None
        for i, d in enumerate(nearest):
            if i not in taken and (best is None or d > nearest[best]):
                best = i
        chosen.append(best)
        taken.add(best)
    return chosen


def plain_mmtok_coverage(
    text: torch.Tensor,
    vision: torch.Tensor,
    vision_clip: torch.Tensor,
    k: int,
    *,
    alpha: float = 0.5,
    tv_temperature: float = 0.02,
    vv_temperature: float = 0.2,
) -> list[int]:
    """MMTok's greedy coverage in plain Python floats: ``k`` indices in selection order, the first best gain."""

    def softmax(values: list[float], temperature: float) -> list[float]:
        top = max(values)
        weights = [math.exp((v - top) / temperature) for v in values]
        total = sum(weights)
        return [w / total for w in weights]

    texts, visions, clips = ([tuple(r) for r in t.double().tolist()] for t in (text, vision, vision_clip))
    m, n = len(texts), len(visions)
    matrix = [[p / m for p in softmax([_cosine(t, v) for v in visions], tv_temperature)] for t in texts]
    matrix += [
        [alpha * q / n for q in softmax([_cosine(a, b) for b in clips], vv_temperature)] for a in clips
    ]
    covered = [0.0] * len(matrix)
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < k:
        best, best_gain = None, -math.inf
        for j in range(n):
            if j in taken:
                continue
            gain = sum(max(0.0, row[j] - c) for row, c in zip(matrix, covered))
            if gain > best_gain:
                best, best_gain = j, gain
        chosen.append(best)
        taken.add(best)
        covered = [max(c, row[best]) for row, c in zip(matrix, covered)]
    return chosen
