"""The autoballoon guest agent (standard library only, Python 3.9+).

The whole agent lives in :mod:`autoballoon_guest.agent`, which also runs as a
single file (``python3 agent.py``) so it can be shipped on its own.
"""

from autoballoon_guest.agent import AGENT, PROTOCOL_VERSION, __version__, main

__all__ = ["AGENT", "PROTOCOL_VERSION", "__version__", "main"]
