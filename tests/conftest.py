import os

# Installed plugins must not leak into the core's tests: each backend's tests opt in by name.
os.environ.setdefault("RHAPSODY_LOAD_PLUGINS", "")
