"""The rhapsody-dragon tests load the dragon plugin (the root conftest loads none by default)."""

from __future__ import annotations

import os

os.environ["RHAPSODY_LOAD_PLUGINS"] = "dragon"
