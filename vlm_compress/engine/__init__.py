"""The compression engine: model-agnostic machinery that turns a method's choices into a shorter sequence.

============================  ================================================================================
:mod:`.session`               the ``forward``/``generate`` wrappers; per call: run the method, time it, report
:mod:`.sequence`              the sequence plan and rewrite (gathered columns, positions, re-padding)
:mod:`.decode`                decoding after a compressed prefill (``generate`` and manual loops)
:mod:`.state`                 one :class:`CallState` per call, keyed once on its KV cache
:mod:`.pruning`               in-LLM pruning (stage 2): attention row, prefill/decode mask mapping, the hooks
:mod:`.signals`               signal sources that features outside the adapters register (TAP)
:mod:`.undo`                  the undo recorder every change to the instance goes through
:mod:`.options`               the patch's options an adapter is built with
:mod:`.cache_compat`          the KV cache keyword across ``transformers`` releases
============================  ================================================================================

Room: the engine. It may import ``views``, ``selection``, ``errors`` and its own modules. It never imports an
adapter module or a method module (it gets both as objects), nor ``patching`` (which builds it).
"""

from .session import Session
from .state import CallState, CallStates
from .undo import UndoRecorder

__all__ = ["CallState", "CallStates", "Session", "UndoRecorder"]
