"""Moved: models load through :func:`vlm_compress.zoo.load` (:mod:`vlm_compress.zoo.loading`), toy and synthetic
models live in :mod:`vlm_compress.zoo.synthetic`, prompt inputs in :mod:`vlm_compress.zoo.inputs`.

Only ``resolve_device`` stays here, for ``vlm_compress.zoo.train`` (being split into a package in parallel);
delete this module once it imports ``vlm_compress.zoo.loading.resolve_device``.
"""

from ..zoo.loading import resolve_device  # noqa: F401
