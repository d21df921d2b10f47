"""``enable_logging``: show rhapsody's own log records on a stream, in one call.

rhapsody and its backend distributions log through the standard :mod:`logging` module, under
the loggers named in :data:`LOGGERS` and their children (``rhapsody_dask.backend``), and, like any
library, configure nothing by themselves. A program that configures :mod:`logging` already
needs nothing from here.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGERS = ("rhapsody", "rhapsody_dask", "rhapsody_dragon", "rhapsody_radical", "rhapsody_vllm")
"""The loggers of rhapsody's own distributions: what :func:`enable_logging` configures."""

DEFAULT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"

# The handler enable_logging installed, so that calling it again replaces it instead of adding a
# second one (each record would be printed twice).
_installed: logging.Handler | None = None


def enable_logging(
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
    format_string: str | None = None,
) -> None:
    """Print rhapsody's log records of ``level`` and above to ``stream``.

    Only the loggers in :data:`LOGGERS` are touched: each gets ``level`` and one shared handler
    (replacing the one an earlier call attached). The root logger and other libraries' loggers
    are left as the program set them. Records are not also passed on to the root logger's
    handlers, so that none is printed twice.

    Args:
        level: a :mod:`logging` level, as a number (``logging.DEBUG``) or a name (``"DEBUG"``).
        stream: where records go; ``sys.stderr`` (looked up at each call) when omitted.
        format_string: a :class:`logging.Formatter` format; :data:`DEFAULT_FORMAT` when omitted.

    Raises:
        ValueError: ``level`` is a name :mod:`logging` does not know.
        TypeError: ``level`` is neither an int nor a str.
    """
    global _installed
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"enable_logging: level must be a logging level (int or name), got {level!r}")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"enable_logging: unknown logging level {level!r}")
        level = number
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(format_string or DEFAULT_FORMAT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _installed is not None:
            logger.removeHandler(_installed)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    _installed = handler
