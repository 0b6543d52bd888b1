"""Text that came from a user (file names, cache names, PDF metadata, questions) made safe to
print to a terminal.

A file name can hold ESC sequences (clear the screen, set the window title, write the clipboard
through OSC 52) or text rich reads as markup (`[link=...]`, `[/]`): printed raw, the name acts on
the terminal instead of being shown. `printable` shows every control or invisible format
character as a visible escape (`\\x1b`, `\\u202e`); `markup_safe` also escapes rich markup.
`json_text` is JSON whose strings hold no raw C1 control or bidi character either (JSON already
escapes C0 controls), so `--json` output stays exact JSON with the same values.

Only the CLI prints; this module is the one place that decides what may reach the terminal.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

# Not printable for `str.isprintable`: C0/C1 controls, DEL, format characters (bidi overrides,
# zero-width joiners), line/paragraph separators, unassigned and private-use code points.
_KEEP_LINES = frozenset("\n\t")
# What `json.dumps(ensure_ascii=False)` leaves raw but a terminal may act on.
_JSON_UNSAFE = re.compile("[\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, keep_lines: bool = False) -> str:
    """`text` with each control or invisible character shown as an escape (`\\x1b`).

    Args:
        keep_lines: keep newlines and tabs (multi-line text such as an answer); otherwise they
            are escaped too, so the result is one line.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or (keep_lines and ch in _KEEP_LINES) else _escape(ch) for ch in text
    )


def markup_safe(text: str) -> str:
    """`printable(text)` with rich markup escaped, for a rich console with markup on."""
    from rich.markup import escape

    return escape(printable(text))


def json_text(value: Any, **kwargs: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **kwargs)` with C1 controls, DEL and bidi or
    zero-width characters written as `\\uXXXX` escapes: the same JSON value, safe on a
    terminal."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeFormatter(logging.Formatter):
    """A log formatter whose message (a warning naming a file or cache) is `printable`; a
    traceback (HOMER_DEBUG) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def write_answer(piece: str) -> None:
    """Write a piece of a streamed answer to stdout: as is into a pipe or file, with control
    characters shown as escapes on a terminal (the model can be led by a document to emit
    them), newlines and tabs kept."""
    import sys

    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    sys.stdout.write(printable(piece, keep_lines=True) if tty else piece)
    sys.stdout.flush()
