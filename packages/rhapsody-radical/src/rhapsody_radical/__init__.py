"""rhapsody-radical: run rhapsody tasks inside a RADICAL-Pilot pilot job.

>>> import rhapsody
>>> backend = rhapsody.get_backend("radical", resource="local.localhost", cores=4)  # doctest: +SKIP

RADICAL-Pilot itself (``radical.pilot``) is imported only when a backend is initialised, so this
package imports without it; ``RadicalBackend.check_available()`` raises its ``ImportError``.
"""

from __future__ import annotations

from .backend import RadicalBackend

__all__ = ["RadicalBackend"]
