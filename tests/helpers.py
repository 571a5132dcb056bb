"""Probes shared by the tests."""

from __future__ import annotations

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
