"""Probes shared by the tests."""

from __future__ import annotations

import torch


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
    """Records the sequence length every decoder layer receives: ``calls[i][layer]``. Use as a context manager."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[list[int]] = []
        self.handles = [
            layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
            for i, layer in enumerate(decoder_layers(model))
        ]

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                self.calls.append([])
            self.calls[-1].append(hidden.shape[1])

        return hook

    def __enter__(self) -> LayerLengths:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
