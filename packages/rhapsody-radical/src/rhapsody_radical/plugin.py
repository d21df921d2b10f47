"""Registers the ``radical`` backend with rhapsody (entry-point group ``rhapsody``)."""

from __future__ import annotations

from rhapsody import BaseBackend, hookimpl

from .backend import RadicalBackend


@hookimpl
def rhapsody_register_backends() -> list[type[BaseBackend]]:
    return [RadicalBackend]
