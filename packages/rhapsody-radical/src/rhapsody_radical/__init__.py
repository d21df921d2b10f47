"""rhapsody-radical: run rhapsody tasks inside a RADICAL-Pilot pilot job.

>>> import rhapsody
>>> backend = rhapsody.get_backend("radical", resource="local.localhost", cores=4)  # doctest: +SKIP

RADICAL-Pilot itself (``radical.pilot``) is imported only when a backend is initialised, so this
package imports without it; ``RadicalBackend.check_available()`` raises its ``ImportError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import RadicalBackend

__all__ = ["RadicalBackend"]


def __getattr__(name: str) -> Any:
    # Lazy: Raptor workers import rhapsody_radical.functions for every function call, and must
    # not pay for the backend (and rhapsody) each time.
    if name == "RadicalBackend":
        from .backend import RadicalBackend

        return RadicalBackend
    raise AttributeError(f"module 'rhapsody_radical' has no attribute {name!r}")
