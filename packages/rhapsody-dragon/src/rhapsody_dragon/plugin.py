"""Registers the ``dragon`` backend with rhapsody (entry-point group ``rhapsody``)."""

from __future__ import annotations

from rhapsody import BaseBackend, hookimpl

from .backend import DragonBackend


@hookimpl
def rhapsody_register_backends() -> list[type[BaseBackend]]:
    return [DragonBackend]
