"""The store of saved caches: names, locks, atomic replacement, listing, loading and removing.

Layout under `paths.store_dir()` (or the `root` given to `Store`):

    <name>/meta.json            metadata, written last (`homer.store.format`)
    <name>/tensors.safetensors  the tensors
    .locks/                     fcntl lock files (per name, per content key)
    .tmp-<pid>-*/ .trash-<pid>-*/  work folders; never listed, swept when their process is gone
    .swap-<pid>-*/old           a cache being replaced (`overwrite`); put back if its writer died
                                before the new one was in place, deleted otherwise

A cache is written into a fresh `.tmp-*` folder and renamed into place under an exclusive
per-name lock; readers take the same lock shared. So an interrupted write leaves at most an
unlisted temp folder, and `load` never sees half a cache. Replacing a cache takes two renames
(old out, new in); a writer that dies between them leaves the old cache in a `.swap-*` folder,
and the next listing puts it back, so an interrupted `--force` loses neither cache. Any `OSError`
while writing (disk full, permissions) becomes a `StoreAccessError` and the temp folder is
removed.

This module knows what a store's folders mean, not what a cache file holds (`format`), nor how
a cache is computed. Its errors carry structured fields; front ends word the advice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homer import paths
from homer.errors import (
    CacheError,
    CacheExistsError,
    CacheNotFoundError,
    StoreAccessError,
)
from homer.store import format as fmt
from homer.store import fs
from homer.store.format import META_FILE, TENSOR_FILE, TEXT_FILE, CacheMeta, Provenance

if TYPE_CHECKING:
    import torch

    from homer.cache import HomerCache

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: The name of the cache last ingested, reused or answered from (a hidden file: never listed).
LAST_USED_FILE = ".last-used"
_WORK_KINDS = ("tmp", "trash", "swap")
# Why a lock file cannot be opened for writing when the store is there to be read.
_CANNOT_WRITE = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ELOOP}
)


@dataclass(frozen=True)
class CacheRecord:
    """A saved cache as listed: its name, folder and metadata (tensors not loaded)."""

    name: str
    path: Path
    metadata: CacheMeta

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata as meta.json holds it (what `homer show` prints)."""
        return self.metadata.to_dict()

    @property
    def key(self) -> str:
        return self.metadata.key

    @property
    def model_id(self) -> str:
        return self.metadata.model.id

    @property
    def source(self) -> str:
        return self.metadata.document.source

    @property
    def document_tokens(self) -> int:
        return self.metadata.tokens.document

    @property
    def cache_tokens(self) -> int:
        return self.metadata.tokens.cache

    @property
    def created(self) -> str:
        return self.metadata.created

    @property
    def size_bytes(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for child in self.path.iterdir():
                with contextlib.suppress(OSError):
                    total += child.stat().st_size
        return total


def validate_name(name: str) -> str:
    """Return `name` if it is a safe cache name, else raise `CacheError`.

    Safe: 1-100 characters from letters, digits, `.`, `_`, `-`, starting with a letter or digit,
    no `..`. This keeps every cache inside the store (no `/`, no `..`, no hidden names).
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise CacheError(
            f"invalid cache name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def derive_name(source: str, key: str) -> str:
    """A readable default name: the source file's stem, slugged, plus 8 hex of the key."""
    stem = Path(source).stem if source not in ("", "-") else "stdin"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    slug = re.sub(r"\.{2,}", ".", slug) or "doc"
    return validate_name(f"{slug}-{key[:8]}")


class Store:
    """The cache store rooted at `root` (default: `paths.store_dir()`, read at construction)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else paths.store_dir()
        self._said_read_only = False

    def _access_error(self, exc: OSError, action: str = "save the cache") -> StoreAccessError:
        return StoreAccessError(action, self.root, exc.errno, exc.strerror or str(exc))

    def _check_root(self) -> None:
        """Refuse a store whose folder, or a folder above it, is a file (`StoreAccessError`)."""
        for path in (self.root, *self.root.parents):
            try:
                if not path.exists():
                    continue
                is_dir = path.is_dir()
            except OSError:
                return  # not ours to judge: the operation itself will say what is wrong
            if not is_dir:
                reason = f"{path} is not a folder"
                raise StoreAccessError("use the cache store", self.root, errno.ENOTDIR, reason)
            return

    # ---------------------------------------------------------------- locks

    def _lock_path(self, kind: str, ident: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", ident) or ".." in ident:
            raise CacheError(f"invalid lock name {ident!r}")
        return self.root / ".locks" / f"{kind}-{ident}.lock"

    def _open_lock(self, path: Path, *, exclusive: bool, action: str) -> int | None:
        """A descriptor of the lock file `path` (created if need be); symlinks are never followed.

        A reader that cannot open it for writing (a read-only mount, another user's store, no
        inodes left, a planted symlink) opens an existing one read-only, or else reads without a
        lock (None); the store says once that it is read-only. A writer gets `StoreAccessError`.
        """
        self._check_root()
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if path.parent.is_symlink():  # homer's own folder, never a link to elsewhere
                raise OSError(errno.ELOOP, "a symbolic link", str(path.parent))
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as exc:
            if exclusive or exc.errno not in _CANNOT_WRITE:
                raise self._lock_error(exc, path, action) from exc
            self._say_read_only(exc)
            with contextlib.suppress(OSError):
                return os.open(path, os.O_RDONLY | flags)
            return None

    def _lock_error(self, exc: OSError, path: Path, action: str) -> StoreAccessError:
        if exc.errno == errno.ELOOP:
            link = Path(exc.filename) if exc.filename else path
            reason = f"{link} is a symbolic link, not homer's lock (remove it)"
            return StoreAccessError(action, self.root, errno.ELOOP, reason)
        return self._access_error(exc, action)

    def _say_read_only(self, exc: OSError) -> None:
        if self._said_read_only:
            return
        self._said_read_only = True
        if exc.errno == errno.ELOOP:
            logger.warning(
                "%s is a symbolic link, not homer's lock: not followed; reading without it "
                "(remove it)",
                exc.filename,
            )
        else:
            logger.warning(
                "the cache store %s is read-only (%s): its caches can be read, not saved or "
                "removed",
                self.root,
                exc.strerror,
            )

    @contextlib.contextmanager
    def _flock(
        self,
        path: Path,
        *,
        exclusive: bool,
        on_wait: Callable[[], None] | None = None,
        wait: bool = True,
        action: str = "use the cache store",
    ) -> Iterator[None]:
        """Hold an fcntl lock on `path`; with `wait=False`, raise `BlockingIOError` if busy."""
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fd = self._open_lock(path, exclusive=exclusive, action=action)
        if fd is None:
            yield  # a reader of a store that cannot be locked
            return
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def ingest_lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Any:
        """Exclusive lock for computing the cache with content `key`.

        Two ingests of the same document serialise on it: the second finds the first's cache
        and reuses it. `on_wait` is called once if the lock is already held.
        """
        return self._flock(self._lock_path("key", key), exclusive=True, on_wait=on_wait)

    def _name_lock(self, name: str, *, exclusive: bool, action: str = "use the cache store") -> Any:
        path = self._lock_path("name", validate_name(name))
        return self._flock(path, exclusive=exclusive, action=action)

    # ---------------------------------------------------------------- listing

    def _cache_dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        # Belt and braces: the regex already forbids separators and '..'.
        if path.resolve().parent != self.root.resolve():
            raise CacheError(f"invalid cache name {name!r}: it would leave the store")
        return path

    def _folders(self) -> list[str]:
        """Names of every cache folder, complete or not (work folders excluded), sorted."""
        self._check_root()
        if not self.root.is_dir():
            return []
        self._restore_swapped()
        return sorted(
            child.name
            for child in self.root.iterdir()
            if not child.name.startswith(".")
            and _NAME_RE.fullmatch(child.name)
            and ".." not in child.name
            and child.is_dir()
        )

    def names(self) -> list[str]:
        """Names of the complete caches (those with metadata), sorted."""
        return [name for name in self._folders() if _has_meta(self.root / name)]

    def _swaps(self, *, alive: bool) -> list[tuple[Path, str]]:
        """`(old cache folder, its name)` in swap folders whose process is (or is no longer) alive.

        A replacement renames the old cache to `.swap-<pid>-*/old` before renaming the new one in.
        """
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            owner = fs.work_owner(child)
            if owner is None or owner[0] != "swap" or fs.pid_alive(owner[1]) != alive:
                continue
            old = child / "old"
            with contextlib.suppress(CacheError):
                found.append((old, validate_name(fmt.saved_name(old))))
        return found

    def records(self) -> list[CacheRecord]:
        """Every readable cache, oldest first. Damaged caches are skipped with a warning.

        Each record is read under its shared name lock, and names in the middle of a
        replacement are waited for, so a listing never misses a cache being re-ingested.
        """
        records = []
        being_replaced = [name for _, name in self._swaps(alive=True)]
        for name in sorted({*self._folders(), *being_replaced}):
            try:
                with self._name_lock(name, exclusive=False):
                    records.append(self._read_record(name))
            except CacheNotFoundError:
                continue  # removed while we listed
            except CacheError as exc:
                logger.warning("%s", exc, extra={"homer_error": exc})
        return sorted(records, key=lambda r: (r.created, r.name))

    def latest(self) -> CacheRecord | None:
        """The most recently created cache, or None when the store is empty."""
        records = self.records()
        return records[-1] if records else None

    def mark_used(self, name: str) -> None:
        """Remember `name` as the cache last ingested, reused or answered from (see
        `last_used`). Best effort: a store that cannot be written to keeps its old mark."""
        try:
            with fs.replacing(self.root / LAST_USED_FILE) as tmp:
                tmp.write_text(name + "\n", encoding="utf-8")
        except OSError as exc:
            logger.debug("could not mark %s as last used: %s", name, exc)

    def last_used(self) -> CacheRecord | None:
        """The cache last ingested, reused or answered from, if it still exists; else the most
        recently created one (`latest`), or None when the store is empty."""
        try:
            name = (self.root / LAST_USED_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name and _NAME_RE.fullmatch(name) and self.exists(name):
            try:
                return self.record(name)
            except CacheError:
                pass  # damaged since: fall back to the newest readable one
        return self.latest()

    def exists(self, name: str) -> bool:
        return _has_meta(self._cache_dir(name))

    def record(self, name: str) -> CacheRecord:
        """The metadata of cache `name`.

        Raises:
            CacheNotFoundError: no such cache (lists those that exist).
            CacheDamagedError, CacheVersionError: its metadata is damaged or from a newer homer.
        """
        # The shared name lock waits out a replacement in progress (`save --force` renames the
        # old cache out before the new one in), so a reader never sees the name missing; one
        # whose writer was killed between the renames is put back first.
        self._heal()
        with self._name_lock(name, exclusive=False):
            return self._read_record(name)

    def find(self, key: str) -> CacheRecord | None:
        """A cache with content key `key`, if one is saved (the newest if several)."""
        matches = [r for r in self.records() if r.key == key]
        return matches[-1] if matches else None

    def _read_record(self, name: str) -> CacheRecord:
        self._check_root()
        folder = self._cache_dir(name)
        if not folder.is_dir():
            raise CacheNotFoundError(name, self.names())
        # A complete cache always has metadata (it is renamed in whole): reading says if not.
        return CacheRecord(name=name, path=folder, metadata=fmt.read_meta(folder, name))

    # ---------------------------------------------------------------- saving

    def save(
        self,
        cache: HomerCache,
        provenance: Provenance,
        *,
        name: str,
        overwrite: bool = False,
    ) -> CacheRecord:
        """Write `cache` atomically as `name` and return its record.

        Args:
            provenance: what the cache was built from (content key, model, document, settings).
            overwrite: replace an existing cache of that name; otherwise that is refused.

        Raises:
            CacheError: the name is invalid.
            CacheExistsError: the name is taken and `overwrite` is off.
            StoreAccessError: the disk refused the write (nothing is left behind).
        """
        folder = self._cache_dir(name)
        tmp: Path | None = None
        try:
            self._check_root()
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            tmp = fs.work_dir(self.root)
            tensor_path = tmp / TENSOR_FILE
            fmt.write_tensors(cache, tensor_path)
            text_path = None
            if provenance.text is not None:
                text_path = tmp / TEXT_FILE
                fmt.write_text(provenance.text, text_path)
            meta = fmt.build_meta(
                cache,
                provenance,
                name=name,
                created=_now(),
                tensor_path=tensor_path,
                text_path=text_path,
            )
            fs.write_durable(tmp / META_FILE, meta.to_json())
            tmp.chmod(0o755)
            with self._name_lock(name, exclusive=True):
                if folder.exists():
                    if not overwrite and _has_meta(folder):
                        raise CacheExistsError(name)
                    self._replace(folder, tmp)
                else:
                    os.replace(tmp, folder)
                fs.fsync_dir(self.root)
        except OSError as exc:
            raise self._access_error(exc) from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved cache %s (%s)", name, folder)
        return CacheRecord(name=name, path=folder, metadata=meta)

    def copy(self, src: str, dst: str) -> CacheRecord:
        """Save the cache `src` again under the name `dst` (same content, same key).

        The tensor file is hard-linked, not copied, where the filesystem allows it: a second
        name costs no space and no time. Tensor files are never changed in place (a new cache
        is a new file renamed into place), so replacing or removing one name leaves the other
        intact."""
        record = self.record(src)
        target = self._cache_dir(dst)
        tmp: Path | None = None
        try:
            self._sweep()
            tmp = fs.work_dir(self.root)
            with self._name_lock(src, exclusive=False):
                files = [TENSOR_FILE] + ([TEXT_FILE] if record.metadata.text else [])
                for file in files:
                    try:
                        os.link(record.path / file, tmp / file)
                    except OSError:  # another filesystem, or one without hard links
                        shutil.copy2(record.path / file, tmp / file)
            meta = record.metadata.renamed(dst, _now())
            fs.write_durable(tmp / META_FILE, meta.to_json())
            tmp.chmod(0o755)
            with self._name_lock(dst, exclusive=True):
                if target.exists():
                    raise CacheExistsError(dst)
                os.replace(tmp, target)
        except OSError as exc:
            raise self._access_error(exc) from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return CacheRecord(name=dst, path=target, metadata=meta)

    def _replace(self, folder: Path, new: Path) -> None:
        """Put the complete cache `new` in place of the cache `folder` (name lock held).

        The old cache waits in `.swap-<pid>-*/old` until the new one is in place. If this
        process is interrupted between the two renames it puts the old one back; if it is killed
        there, `_restore_swapped` (run by the next listing) does.
        """
        swap = fs.work_dir(self.root, "swap")
        os.replace(folder, swap / "old")
        try:
            os.replace(new, folder)
        except BaseException:
            if not folder.exists():
                os.replace(swap / "old", folder)
            shutil.rmtree(swap, ignore_errors=True)
            raise
        shutil.rmtree(swap, ignore_errors=True)

    def _restore_swapped(self) -> None:
        """Put back caches whose replacement was killed between its two renames."""
        for old, name in self._swaps(alive=False):
            # Never wait here: the caller may hold this very name's lock (a load that found the
            # name missing lists the store); a busy name is restored by a later listing.
            with (
                contextlib.suppress(OSError, CacheError),
                self._flock(self._lock_path("name", name), exclusive=True, wait=False),
            ):
                if old.is_dir() and not (self.root / name).exists():
                    os.replace(old, self.root / name)
                    logger.warning("restored cache %s after an interrupted replacement", name)

    def _heal(self) -> None:
        """`_restore_swapped` before reading one name; a store it cannot list is left to the
        read itself to report."""
        with contextlib.suppress(OSError):
            self._restore_swapped()

    def _sweep(self) -> None:
        """Remove temp, trash and swap folders left by processes that no longer exist."""
        if not self.root.is_dir():
            return
        self._restore_swapped()
        fs.sweep(self.root, _WORK_KINDS)

    # ---------------------------------------------------------------- loading

    def load(
        self,
        name: str,
        *,
        model_fingerprint: str | None = None,
        tokenizer_fingerprint: str | None = None,
        model_id: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[HomerCache, CacheRecord]:
        """Load and check cache `name`; return it with its record.

        Args:
            model_fingerprint / tokenizer_fingerprint: when given, must match the ones the cache
                was built with (`model_id` only improves the message).
            dtype: convert keys and values to this dtype when it differs (a dtype cast of the
                same weights' cache; the fingerprint is dtype-independent).
            device: move the cache there.

        Raises:
            CacheNotFoundError: no such cache.
            CacheMismatchError: built with another model or tokenizer (both are named).
            CacheDamagedError: damaged (checksum, truncation, bad header), naming the file.
            CacheVersionError: written by a newer homer.
            CacheDtypeError: `dtype` cannot hold its values.
        """
        self._heal()  # a replacement killed between its renames: the old one is back
        with self._name_lock(name, exclusive=False):
            record = self._read_record(name)
            fmt.check_built_with(
                record.metadata,
                name,
                model_fingerprint=model_fingerprint,
                tokenizer_fingerprint=tokenizer_fingerprint,
                model_id=model_id,
            )
            cache = fmt.read_cache(record.path, record.metadata, name)
        if dtype is not None and cache.dtype != dtype:
            logger.info("converting cache %s from %s to %s", name, cache.dtype, dtype)
            cache = fmt.convert(cache, dtype, name)
        if device is not None:
            cache = cache.to(device=device)
        return cache, record

    def read_spans(self, name: str) -> torch.Tensor | None:
        """The `(T, 2)` character spans of cache `name`'s tokens (its tensor file checked, its
        keys and values not loaded), or None for a cache saved without them."""
        with self._name_lock(name, exclusive=False):
            record = self._read_record(name)
            return fmt.read_spans(record.path, record.metadata, name)

    def read_text(self, name: str) -> str | None:
        """The document text saved with cache `name` (checksum verified), or None for a cache
        saved without it.

        Raises:
            CacheNotFoundError: no such cache.
            CacheDamagedError: the text file is damaged.
        """
        with self._name_lock(name, exclusive=False):
            record = self._read_record(name)
            return fmt.read_text(record.path, record.metadata, name)

    # ---------------------------------------------------------------- removing

    def remove(self, name: str) -> None:
        """Delete cache `name` (raises `CacheNotFoundError` when it does not exist).

        A folder with damaged metadata can still be removed, so removing is always the fix.
        """
        folder = self._cache_dir(name)
        self._heal()  # so `rm` and `show` agree on what exists
        if not folder.is_dir():
            raise CacheNotFoundError(name, self.names())
        with self._name_lock(name, exclusive=True, action=f"remove {name!r}"):
            try:
                trash = fs.work_dir(self.root, "trash")
                os.replace(folder, trash / "old")
            except OSError as exc:
                raise self._access_error(exc, f"remove {name!r}") from exc
            shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._lock_path("name", name).unlink()


def _has_meta(folder: Path) -> bool:
    """Whether the cache folder `folder` holds metadata (True if it is there but unreadable)."""
    try:
        (folder / META_FILE).stat()
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
