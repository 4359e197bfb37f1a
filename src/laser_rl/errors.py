"""User-facing errors: the CLI prints their message and exits with status 2, no traceback."""

from __future__ import annotations


class LaserError(Exception):
    """An error caused by the user's input (config, data file, model folder, flag values).

    The message must say what is wrong and where (file, line, field or argument name).
    """
