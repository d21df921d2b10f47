"""rhapsody-dragon: a rhapsody backend on Dragon (a worker pool for functions, ``dragon.workflows.batch`` for the rest).

Importing this package never imports Dragon; the backend does that when it starts.
"""

from __future__ import annotations

from .backend import DragonBackend

__all__ = ["DragonBackend"]
