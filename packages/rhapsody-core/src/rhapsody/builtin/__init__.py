"""Backends that ship with rhapsody-core, registered through the same hooks as any plugin."""
