"""The one place where exceptions become what a shell user sees: a line on stderr and an exit code.

Known errors (`HomerError`, bad option values, out of memory, the system refusing a file
operation, Ctrl-C) print one line prefixed with `homer: ` and exit 1 (130 for Ctrl-C). Anything
else is a bug: one line too, exit 2, with a hint. `HOMER_DEBUG=1` re-raises everything so the full
traceback shows.

The library's errors say what is wrong and carry structured fields; `describe` adds what to do
about it in this CLI's terms (its flags and commands). Warnings the library logs about an error
(a damaged cache skipped by a listing) get the same advice through `AdviceFilter`.

Nothing here imports torch: out-of-memory errors are recognised by type name and message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator

import typer

from homer.errors import (
    CacheDamagedError,
    CacheDtypeError,
    CacheExistsError,
    CacheMismatchError,
    CacheNotFoundError,
    CacheUnreadableError,
    CacheVersionError,
    DocumentTooLargeError,
    HomerError,
    StoreAccessError,
)
from homer.service import StoreEmptyError
from homer_cli.terminal import printable

#: Each reading limit's `homer ingest` flag and environment variable (`homer.documents`).
LIMIT_FLAGS = {
    "bytes": ("--max-bytes", "HOMER_MAX_BYTES"),
    "pages": ("--max-pages", "HOMER_MAX_PAGES"),
    "tokens": ("--max-doc-tokens", "HOMER_MAX_TOKENS"),
}

#: Exit codes.
EXIT_USER_ERROR = 1
EXIT_BUG = 2
EXIT_INTERRUPTED = 130


def debug_enabled() -> bool:
    return os.environ.get("HOMER_DEBUG", "").strip() not in ("", "0", "false", "no")


def say(message: str) -> None:
    """One line on stderr, prefixed `homer: `."""
    sys.stderr.write(f"homer: {printable(message)}\n")  # a name in it is shown, never obeyed
    sys.stderr.flush()


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if (
        type(exc).__name__ == "OutOfMemoryError"
    ):  # torch.cuda.OutOfMemoryError, torch.OutOfMemoryError
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _is_host_memory(exc: BaseException | None) -> bool:
    """Python's MemoryError or the CPU allocator's refusal (not a CUDA out-of-memory)."""
    if exc is None:
        return False
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "can't allocate memory" in text and "cuda" not in text


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(exc).__name__


def _memory_advice(
    max_chunk_option: bool, hint_max_chunk: int | None, exc: BaseException | None = None
) -> str:
    if _is_host_memory(exc):
        # The machine's RAM, not a GPU's. (Reading a document too large for it is refused by
        # `homer.documents` in its own words; this is the computing.)
        if max_chunk_option:
            now = f" (now {hint_max_chunk})" if hint_max_chunk else " (default: half the window)"
            return (
                f"out of memory on this machine (RAM): lower --max-chunk{now}, or ingest a "
                "smaller document (--max-bytes / --max-doc-tokens refuse large ones early)"
            )
        return "out of memory on this machine (RAM): close other programs, or use a smaller model"
    if max_chunk_option:
        now = f" (now {hint_max_chunk})" if hint_max_chunk else " (default: half the window)"
        return f"out of memory: lower --max-chunk{now}, or use --dtype bfloat16 / a smaller model"
    return "out of memory: use --dtype bfloat16, --device cpu or a smaller model"


def _os_message(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free some space and try again"
    return f"{exc.strerror or _one_line(exc)}{where}"


def _remove_and_reingest(name: str | None) -> str:
    if name is None:
        return "re-run `homer ingest`"
    return f"remove it with `homer rm {name}` and re-run `homer ingest`"


def describe(exc: HomerError) -> str:
    """`exc` as one line for a shell user: what went wrong, then what to do about it."""
    text = _one_line(exc)
    if isinstance(exc, CacheNotFoundError):
        listing = ", ".join(exc.available) or "none; run `homer ingest` first"
        return f"no cache named {exc.name!r} (existing: {listing})"
    if isinstance(exc, CacheUnreadableError):
        return f"{text}; check its permissions, or {_remove_and_reingest(exc.name)}"
    if isinstance(exc, CacheDamagedError):
        return f"{text}; {_remove_and_reingest(exc.name)}"
    if isinstance(exc, CacheVersionError):
        return f"{text}; upgrade homer, or {_remove_and_reingest(exc.name)}"
    if isinstance(exc, CacheMismatchError):
        if exc.field == "tokenizer":
            return f"{text}; re-run `homer ingest` with this model"
        if exc.same_model_id:
            return (
                f"{text}; ask with --dtype {exc.dtype}, or re-run `homer ingest` with these "
                "settings"
            )
        return f"{text}; use --model {exc.model_id} or re-run `homer ingest` with this model"
    if isinstance(exc, CacheExistsError):
        return f"{text}; choose another --name, or pass --force to replace it"
    if isinstance(exc, CacheDtypeError):
        return f"{text}; ask with --dtype {exc.saved}"
    if isinstance(exc, DocumentTooLargeError):
        flag, variable = LIMIT_FLAGS.get(exc.measure, ("--max-bytes", "HOMER_MAX_BYTES"))
        return f"{text}; raise it with {flag} N or {variable}=N (0: no limit)"
    if isinstance(exc, StoreAccessError):
        if exc.no_space:
            return f"{text}; free some space"
        if exc.denied:
            return f"{text} (set HOMER_HOME to a writable folder?)"
        if exc.not_a_folder:
            return f"{text} (set HOMER_HOME to a folder)"
    return text


class AdviceFilter(logging.Filter):
    """Words a log record about a `HomerError` (passed as `extra={"homer_error": exc}`) as
    `describe` does, so a warning about a skipped cache says how to fix it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = getattr(record, "homer_error", None)
        if isinstance(error, HomerError):
            record.msg, record.args = "%s", (describe(error),)
        return True


#: The library's names for the settings the CLI sets, and the flags that set them.
FLAGS = {
    "max_chunk_len": "--max-chunk",
    "target_len": "--budget",
    "max_new_tokens": "--max-tokens",
    "top_p": "--top-p",
}


def in_flags(message: str) -> str:
    """`message` with the library's setting names replaced by the CLI's flags."""
    for name, flag in FLAGS.items():
        message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
    return message


@contextlib.contextmanager
def user_errors(
    hint_max_chunk: int | None = None, *, max_chunk_option: bool = False
) -> Iterator[None]:
    """Turn exceptions raised inside the block into a one-line message and an exit code.

    Args:
        hint_max_chunk: the `--max-chunk` in use, quoted in the out-of-memory advice.
        max_chunk_option: the command has `--max-chunk` (ingest, calibrate), so out-of-memory
            advice names it; other commands get advice they can act on.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except typer.BadParameter as exc:  # a bad value found inside a command
        if debug_enabled():
            raise
        say(_one_line(Exception(exc.format_message())))
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        say("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # `homer ask ... | head -1`: the reader left; not an error worth a message.
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        raise typer.Exit(0) from None
    except Exception as exc:
        if debug_enabled():
            raise
        if _is_out_of_memory(exc):
            say(_memory_advice(max_chunk_option, hint_max_chunk, exc))
            raise typer.Exit(EXIT_USER_ERROR) from None
        if isinstance(exc, StoreEmptyError):
            say("no saved caches yet; run `homer ingest FILE` first")
            raise typer.Exit(EXIT_USER_ERROR) from None
        if isinstance(exc, HomerError):
            say(describe(exc))
            raise typer.Exit(EXIT_USER_ERROR) from None
        if isinstance(exc, ValueError):
            # The library validates settings with ValueError (HomerConfig, generation options).
            say(in_flags(_one_line(exc)))
            raise typer.Exit(EXIT_USER_ERROR) from None
        if isinstance(exc, OSError) and exc.errno is not None:
            # The system refused a file operation (a full disk, a read-only folder): not a bug.
            say(_os_message(exc))
            raise typer.Exit(EXIT_USER_ERROR) from None
        say(
            f"unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(set HOMER_DEBUG=1 for the traceback)"
        )
        raise typer.Exit(EXIT_BUG) from None
