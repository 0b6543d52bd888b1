"""Small filesystem steps that survive a crash: durable writes, fsync, temp-and-rename, sweeping.

Work files and folders are named `.<kind>-<pid>-<random>` next to their destination, so a later
process can tell whose they are and `sweep` removes those whose process is gone. Shared by the
cache store and by calibration; knows nothing about what is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_WORK_NAME = re.compile(r"\.([a-z]+)-(\d+)-.*")
# How libraries that are not Python (safetensors) quote the system's error in their messages.
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def os_error_in(exc: BaseException) -> OSError | None:
    """The system error behind `exc`: `exc` itself if it is an `OSError`, else the one a library
    names only in its message (safetensors: `"... No space left on device (os error 28)"`)."""
    if isinstance(exc, OSError):
        return exc
    match = _OS_ERROR_TEXT.search(str(exc))
    if match is None:
        return None
    code = int(match.group(1) or match.group(2))
    return OSError(code, os.strerror(code))


def write_durable(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the folder entry is the caller's to fsync)."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    """Flush a file someone else wrote (a library's `save_file`) to the disk."""
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it), where the system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (this process always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def work_dir(parent: Path, kind: str = "tmp") -> Path:
    """A fresh, empty `.<kind>-<pid>-*` folder in `parent`."""
    return Path(tempfile.mkdtemp(prefix=f".{kind}-{os.getpid()}-", dir=parent))


def work_owner(path: Path) -> tuple[str, int] | None:
    """`(kind, pid)` of a work file or folder named by `work_dir` / `replacing`, else None."""
    match = _WORK_NAME.fullmatch(path.name)
    return (match.group(1), int(match.group(2))) if match else None


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Write `path` atomically: yield a temp file's path next to it to write.

    When the block ends normally the temp file is fsynced and renamed over `path` (readers see
    the old file or the new one, never half of it) and the folder is fsynced; when it raises,
    the temp file is removed. A process killed inside the block leaves a `.tmp-<pid>-*` file that
    `sweep` removes later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{os.getpid()}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except Exception as exc:  # a writer's report of a system error becomes an OSError
            error = os_error_in(exc)
            if error is None or error is exc:
                raise
            error.filename = str(path)
            raise error from exc
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sweep(
    parent: Path, kinds: tuple[str, ...] = ("tmp",), *, unowned_after: float | None = None
) -> None:
    """Remove work files and folders of `kinds` in `parent` whose process is gone.

    Args:
        unowned_after: also remove `.tmp-*` files with no process id in their name (written
            before work files carried one) once they are this many seconds old.
    """
    try:
        children = list(parent.iterdir())
    except OSError:
        return
    for child in children:
        owner = work_owner(child)
        if owner is None:
            if unowned_after is None or not child.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(OSError):
                if time.time() - child.lstat().st_mtime < unowned_after:
                    continue
        elif owner[0] not in kinds or pid_alive(owner[1]):
            continue
        logger.info("removing %s left by an interrupted write", child)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
