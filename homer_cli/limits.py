"""`homer ingest`'s reading limits: the options, and the `ReadLimits` they make.

The library reads `HOMER_MAX_BYTES`, `HOMER_MAX_PAGES` and `HOMER_MAX_TOKENS` itself
(`homer.documents.ReadLimits.from_env`), so a batch ingest, the server and a script all honour
them; an option given here overrides the variable for this run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from homer.documents import ReadLimits

MaxBytesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-bytes",
        help="Most bytes of a document (or of stdin) read; default 64 MiB, or $HOMER_MAX_BYTES; "
        "0: no limit.",
        show_default=False,
    ),
]
MaxPagesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pages",
        help="Most pages of a PDF; default 10,000, or $HOMER_MAX_PAGES; 0: no limit.",
        show_default=False,
    ),
]
MaxDocTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-doc-tokens",
        help="Most tokens of a document (estimated before the model runs); default 4,000,000, "
        "or $HOMER_MAX_TOKENS; 0: no limit.",
        show_default=False,
    ),
]


def read_limits_env(
    context: typer.Context,
    max_bytes: int | None,
    max_pages: int | None,
    max_doc_tokens: int | None,
) -> Callable[[], ReadLimits]:
    """Check the options and put the given ones in this process's environment until the command
    ends (a batch ingest reads its documents in the library); return a maker of the
    `ReadLimits` in force."""
    given = {
        "HOMER_MAX_BYTES": ("--max-bytes", max_bytes),
        "HOMER_MAX_PAGES": ("--max-pages", max_pages),
        "HOMER_MAX_TOKENS": ("--max-doc-tokens", max_doc_tokens),
    }
    for flag, value in given.values():
        if value is not None and value < 0:
            raise typer.BadParameter(f"{flag} must be at least 0 (0: no limit), got {value}")
    saved = {variable: os.environ.get(variable) for variable in given}

    def restore() -> None:  # a program running commands in-process keeps its environment
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value

    context.call_on_close(restore)
    for variable, (_, value) in given.items():
        if value is not None:
            os.environ[variable] = str(value)

    def limits() -> ReadLimits:
        from homer.documents import ReadLimits

        return ReadLimits.from_env()

    return limits
