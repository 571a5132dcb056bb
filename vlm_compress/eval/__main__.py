"""``python -m vlm_compress.eval`` / ``accelerate launch -m vlm_compress.eval``: the options of ``vlmc eval``."""

import sys

from .cli import main

sys.exit(main())
