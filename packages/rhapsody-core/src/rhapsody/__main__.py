"""``python -m rhapsody``: the same as the ``rhapsody`` command."""

import sys

from .cli import main

sys.exit(main())
