"""Hot-path ops, each with a readable torch reference and a Triton kernel; dispatch picks one per call.

``functional/`` calls these; methods never import a backend. See ``docs/kernels.md``.
"""

from ._dispatch import BACKENDS, get_backend, set_backend, triton_available
from .coverage_gain import coverage_gain, greedy_coverage
from .k_center import k_center
from .pairwise_similarity import pairwise_similarity

__all__ = [
    "BACKENDS",
    "coverage_gain",
    "get_backend",
    "greedy_coverage",
    "k_center",
    "pairwise_similarity",
    "set_backend",
    "triton_available",
]
