"""The `homer` command-line interface (Typer + rich); see `homer_cli.main`.

Ctrl-C while the CLI is still importing (a third of a second of typer, rich and homer) would
print a KeyboardInterrupt traceback from whatever module was loading. So when this package is
imported to run the `homer` command (or `python -m homer_cli`), Ctrl-C first ends the process
at once with `homer: interrupted` and exit 130 (nothing has been written yet), until the CLI is
ready and `ready_for_interrupts` gives Ctrl-C back to Python (then `user_errors` handles it).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"homer: interrupted\n")
    os._exit(130)


def _install_early_interrupt() -> None:
    """Only for the command itself: a program importing homer_cli keeps its own Ctrl-C."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    program = sys.argv[0] if sys.argv else ""
    if program == "-m" or os.path.basename(program) == "homer":
        signal.signal(signal.SIGINT, _interrupted_early)


def ready_for_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the CLI is loaded and handles it)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_early:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_install_early_interrupt()
