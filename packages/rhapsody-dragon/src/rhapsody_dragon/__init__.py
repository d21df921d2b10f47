"""rhapsody-dragon: a streaming rhapsody backend on ``dragon.workflows.batch``.

Importing this package never imports Dragon; the backend does that when it starts.
"""

from __future__ import annotations

from .backend import DragonBackend

__all__ = ["DragonBackend"]
