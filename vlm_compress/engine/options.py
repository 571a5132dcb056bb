"""What the caller chose for one patch that an adapter may need (handed to it with the undo recorder).

Room: the engine. Imports nothing from vlm_compress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PatchOptions:
    """The resolved options of one patch."""

    position_ids: str = "original"  # the resolved policy, "original" or "contiguous"
    tokenizer: Any = None  # for the prompt's text signals
    image_processor: Any = None  # LLaVA-1.5: whether images were padded to square
