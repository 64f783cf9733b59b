"""The base of every error caused by input (params, files, data), not by a bug.

Stages print such an error as one clear message, without a traceback, and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: the message names the file, key or value and what was expected."""


def run_main(main: Callable[[], object]) -> None:
    """Run a stage's ``main``; turn a :class:`UserError` into ``error: ...`` and exit status 1."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
