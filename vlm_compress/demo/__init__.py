"""Gradio demo: full vs compressed answers, kept-token overlays, score heat maps and a budget sweep.

``Demo`` (logic, no UI) is importable without gradio; ``build`` (the page) imports gradio on use.
"""

from .app import Answer, Demo, DemoInputError, Outcome, load_image

__all__ = ["Answer", "Demo", "DemoInputError", "Outcome", "build", "load_image"]


def build(demo: Demo, **kwargs):
    from .ui import build as build_page

    return build_page(demo, **kwargs)
