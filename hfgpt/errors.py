"""User-facing errors: one line, the bad value, the fix, exit code 2.

Every runnable module wraps its `main` with `cli`, so a `UserError` raised anywhere below it
prints as `error: <message>` on stderr and exits 2 without a traceback. Set HFGPT_DEBUG=1 to
see the traceback (and the libraries' own info messages and progress bars) as well.
"""

import functools
import os
import sys


class UserError(Exception):
    """A problem the user can fix: a bad recipe value, a missing file, an unreachable model."""


def cli(main):
    """Turn UserError into a one-line message and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        if not os.environ.get("HFGPT_DEBUG"):
            _quiet_libraries()
        try:
            return main(argv)
        except UserError as e:
            if os.environ.get("HFGPT_DEBUG"):
                raise
            for line in str(e).splitlines():
                print(f"error: {line}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def _quiet_libraries() -> None:
    """transformers' per-load progress bars and advice lines drown hfgpt's own output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
