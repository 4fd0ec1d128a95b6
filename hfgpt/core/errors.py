"""User-facing errors: one line, the bad value, the fix, exit code 2.

Every runnable module wraps its `main` with `cli`, so a `UserError` raised anywhere below it
prints as `error: <message>` on stderr and exits 2 without a traceback. Set HFGPT_DEBUG=1 to
see the traceback (and the libraries' own info messages and progress bars) as well.

    raise UserError(f"block_size={n} is larger than ...: set block_size to {limit} or less")
    reason = first_line(exc)          # an exception's first line, for such a message
"""

import functools
import gc
import json
import os
import sys
import time

from hfgpt.core.names import shown_text


class UserError(Exception):
    """A problem the user can fix: a bad recipe value, a missing file, an unreachable model."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def cli(main):
    """Turn UserError into a one-line message and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        args = sys.argv[1:] if argv is None else argv
        if not os.environ.get("HFGPT_DEBUG") and not {"-h", "--help"} & set(args):  # --help stays fast
            _quiet_libraries()
        try:
            return main(argv)
        except UserError as e:
            if os.environ.get("HFGPT_DEBUG"):
                raise
            message = shown_message(str(e))
            for line in message.splitlines():
                print(f"error: {line.removeprefix('error: ')}", file=sys.stderr)
            _tell_launcher(message)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if argv is None:  # run from the command line (python -m hfgpt.X): the process ends next
                ending()

    return wrapper


LINE_CHARS = 2000  # an error line quotes at most this much of what it names (a YAML alias bomb is megabytes)


def shown_message(message: str) -> str:
    """A UserError's text as it is printed: URLs without their secrets (a password in init_from or an
    eval model's URL), each line cut at LINE_CHARS."""
    lines = []
    for line in shown_text(message).splitlines():
        cut = len(line) - LINE_CHARS
        lines.append(line if cut <= 0 else f"{line[:LINE_CHARS]}... ({cut:,} more characters)")
    return "\n".join(lines)


def ending() -> None:
    """The process is about to exit: spare it the interpreter's last garbage collections over the
    ~350,000 objects torch and transformers make on import (about 1 s of a 2-core CPU, a tenth of a
    short training run); the operating system takes the memory back anyway. Objects freed by their
    reference count, and atexit handlers, are not affected."""
    gc.freeze()


def _tell_launcher(message: str) -> None:
    """Under `accelerate launch --multi_gpu` (torchrun), write the error where torchrun reads a
    failed process's cause, so the launcher's closing summary ends with hfgpt's line instead of
    'To enable traceback see ...'."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    record = {"message": {"message": f"error: {message}", "extraInfo": {"py_callstack": f"error: {message}",
                                                                        "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(record, f)
    except OSError:
        pass


def _quiet_libraries() -> None:
    """transformers' per-load progress bars and advice lines drown hfgpt's own output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
