"""Pure tensor math behind the methods: no models, no hooks. Read these next to the papers."""

from .cdpruner import conditional_kernel, dpp_map, dpp_map_reference, instruction_relevance
from .coverage import coverage_matrix, greedy_coverage, mmtok_coverage
from .dart import dart_select
from .divprune import divprune, divprune_distances, divprune_reference
from .globalcom2 import (
    combined_crop_scores,
    crop_attention_sums,
    crop_keep_counts,
    crop_retention_ratios,
    solve_retention_ratio,
    thumbnail_prior_per_crop,
)
from .in_llm import keep_top_attended
from .k_center import k_center
from .max_sum import max_sum_diversification
from .merging import bipartite_soft_matching, merge_by_groups
from .mustdrop import dual_attention_keep, key_token_set, spatial_merge_windows, window_similarity
from .pdrop import pyramid_keep_count, pyramid_layers
from .pooling import cell_average_pool, grid_layout, uniform_grid_indices
from .similarity import cosine_similarity, normalize_rows
from .sparsevlm import (
    SPARSEVLM_TOKEN_LISTS,
    density_peak_clusters,
    rank_keep_count,
    select_raters,
    sparsevlm_keep_counts,
)
from .tap import dilated_avg_pool
from .topk import topk_indices
from .visionzip import contextual_targets, contextual_tokens, visionzip
from .vispruner import remove_duplicates, vispruner

__all__ = [
    "SPARSEVLM_TOKEN_LISTS",
    "bipartite_soft_matching",
    "cell_average_pool",
    "combined_crop_scores",
    "coverage_matrix",
    "crop_attention_sums",
    "crop_keep_counts",
    "crop_retention_ratios",
    "density_peak_clusters",
    "dual_attention_keep",
    "greedy_coverage",
    "k_center",
    "keep_top_attended",
    "key_token_set",
    "max_sum_diversification",
    "mmtok_coverage",
    "merge_by_groups",
    "cosine_similarity",
    "dilated_avg_pool",
    "grid_layout",
    "normalize_rows",
    "pyramid_keep_count",
    "pyramid_layers",
    "rank_keep_count",
    "select_raters",
    "solve_retention_ratio",
    "sparsevlm_keep_counts",
    "spatial_merge_windows",
    "thumbnail_prior_per_crop",
    "topk_indices",
    "uniform_grid_indices",
    "conditional_kernel",
    "dpp_map",
    "dpp_map_reference",
    "instruction_relevance",
    "dart_select",
    "window_similarity",
    "contextual_targets",
    "contextual_tokens",
    "divprune",
    "divprune_distances",
    "divprune_reference",
    "remove_duplicates",
    "vispruner",
    "visionzip",
]
