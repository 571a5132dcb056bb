"""Old home of the KV-cache keyword helpers, kept for the callers outside the engine (zoo, bench, demo).

They live in :mod:`vlm_compress.engine.cache_compat` now; import them from there.
"""

from ..engine.cache_compat import CACHE_KEYWORDS, cache_keyword, call_cache, output_cache

__all__ = ["CACHE_KEYWORDS", "cache_keyword", "call_cache", "output_cache"]
