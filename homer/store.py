"""The on-disk store of saved caches: safetensors + JSON, content-addressed, atomic, checked.

Layout under `paths.store_dir()` (or the `root` given to `Store`):

    <name>/meta.json            metadata (see `FORMAT_VERSION`), written last
    <name>/tensors.safetensors  keys/values per layer in the model's dtype, token_ids,
                                positions, last_logits
    .locks/                     fcntl lock files (per name, per content key)
    .tmp-<pid>-*/ .trash-<pid>-*/  work folders; never listed, swept when their process is gone
    .swap-<pid>-*/old           a cache being replaced (`overwrite`); put back if its writer died
                                before the new one was in place, deleted otherwise

A cache is written into a fresh `.tmp-*` folder (tensor file fsynced, its SHA-256 recorded in the
metadata) and renamed into place under an exclusive per-name lock; readers take the same lock
shared. So an interrupted write leaves at most an unlisted temp folder, and `load` never sees half
a cache. Replacing a cache takes two renames (old out, new in); a writer that dies between them
leaves the old cache in a `.swap-*` folder, and the next listing puts it back, so an interrupted
`--force` loses neither cache. Any `OSError` while writing (disk full, permissions) becomes a
one-line `CacheError` and the temp folder is removed. Loading reads data only
(`safetensors.torch.load_file` and `json`): nothing in a cache file can execute code.

The content key hashes the document's SHA-256, the model and tokenizer fingerprints, the HOMER
settings and the focus question, so ingesting the same thing again can reuse the saved cache.

This module knows nothing about how a cache is computed, nor about models beyond their
fingerprints, ids and dtypes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homer import paths
from homer.errors import CacheError, CacheMismatchError

if TYPE_CHECKING:  # torch is imported lazily so `homer list` / `show` / `rm` stay quick
    import torch

    from homer.cache import HomerCache

logger = logging.getLogger(__name__)

#: Version of the on-disk format written by this code. Older versions are read when they can be;
#: newer ones are refused with a message asking to upgrade homer.
FORMAT_VERSION = 1
FORMAT_NAME = "homer-cache"
META_FILE = "meta.json"
TENSOR_FILE = "tensors.safetensors"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# What `_read_record` checks before anything reads the metadata.
_REQUIRED_FIELDS: dict[str, type] = {
    "key": str,
    "model": dict,
    "tokenizer": dict,
    "dtype": str,
    "tensor_file": str,
    "tokens": dict,
}
_HASH_BLOCK = 1 << 22


class CacheNotFoundError(CacheError):
    """No cache of that name exists. `available` lists the names that do."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


@dataclass(frozen=True)
class CacheRecord:
    """A saved cache as listed: its name, folder and metadata (tensors not loaded)."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    @property
    def model_id(self) -> str:
        return str(self.meta.get("model", {}).get("id", ""))

    @property
    def source(self) -> str:
        return str(self.meta.get("document", {}).get("source", ""))

    @property
    def document_tokens(self) -> int:
        return int(self.meta.get("tokens", {}).get("document", 0))

    @property
    def cache_tokens(self) -> int:
        return int(self.meta.get("tokens", {}).get("cache", 0))

    @property
    def created(self) -> str:
        return str(self.meta.get("created", ""))

    @property
    def size_bytes(self) -> int:
        total = 0
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


def content_key(
    *,
    document_sha256: str,
    model_fingerprint: str,
    tokenizer_fingerprint: str,
    settings: Mapping[str, Any],
    focus: str | None,
) -> str:
    """The content address of a cache: what determines its tensors (hex, 32 chars)."""
    blob = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "document": document_sha256,
            "model": model_fingerprint,
            "tokenizer": tokenizer_fingerprint,
            "settings": dict(settings),
            "focus": focus,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def derive_name(source: str, key: str) -> str:
    """A readable default name: the source file's stem, slugged, plus 8 hex of the key."""
    stem = Path(source).stem if source not in ("", "-") else "stdin"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    slug = re.sub(r"\.{2,}", ".", slug) or "doc"
    return validate_name(f"{slug}-{key[:8]}")


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str, path: Path, fix: str) -> torch.dtype:
    import torch

    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise CacheError(f"{path}: unknown dtype {name!r} in the cache metadata; {fix}")
    return value


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """The cache store rooted at `root` (default: `paths.store_dir()`, read at construction)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else paths.store_dir()

    # ---------------------------------------------------------------- locks

    def _lock_path(self, kind: str, ident: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", ident) or ".." in ident:
            raise CacheError(f"invalid lock name {ident!r}")
        locks = self.root / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(_disk_message(exc, self.root, "use the cache store")) from exc
        return locks / f"{kind}-{ident}.lock"

    @contextlib.contextmanager
    def _flock(
        self,
        path: Path,
        *,
        exclusive: bool,
        on_wait: Callable[[], None] | None = None,
        wait: bool = True,
    ) -> Iterator[None]:
        """Hold an fcntl lock on `path`; with `wait=False`, raise `BlockingIOError` if busy."""
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheError(_disk_message(exc, self.root, "use the cache store")) from exc
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

    def _name_lock(self, name: str, *, exclusive: bool) -> Any:
        return self._flock(self._lock_path("name", validate_name(name)), exclusive=exclusive)

    # ---------------------------------------------------------------- listing

    def _cache_dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        # Belt and braces: the regex already forbids separators and '..'.
        if path.resolve().parent != self.root.resolve():
            raise CacheError(f"invalid cache name {name!r}: it would leave the store")
        return path

    def _folders(self) -> list[str]:
        """Names of every cache folder, complete or not (work folders excluded), sorted."""
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
        return [name for name in self._folders() if (self.root / name / META_FILE).is_file()]

    def _swaps(self, *, alive: bool) -> list[tuple[Path, str]]:
        """`(old cache folder, its name)` in swap folders whose process is (or is no longer) alive.

        A replacement renames the old cache to `.swap-<pid>-*/old` before renaming the new one in.
        """
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = re.fullmatch(r"\.swap-(\d+)-.*", child.name)
            if not match or _pid_alive(int(match.group(1))) != alive:
                continue
            old = child / "old"
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CacheError):
                meta = json.loads((old / META_FILE).read_text("utf-8"))
                found.append((old, validate_name(meta["name"])))
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
                logger.warning("%s", exc)
        return sorted(records, key=lambda r: (r.created, r.name))

    def latest(self) -> CacheRecord | None:
        """The most recently created cache, or None when the store is empty."""
        records = self.records()
        return records[-1] if records else None

    def exists(self, name: str) -> bool:
        return (self._cache_dir(name) / META_FILE).is_file()

    def record(self, name: str) -> CacheRecord:
        """The metadata of cache `name`.

        Raises:
            CacheNotFoundError: no such cache (lists those that exist).
            CacheError: its metadata is damaged or from a newer homer.
        """
        # The shared name lock waits out a replacement in progress (`save --force` renames the
        # old cache out before the new one in), so a reader never sees the name missing.
        with self._name_lock(name, exclusive=False):
            return self._read_record(name)

    def find(self, key: str) -> CacheRecord | None:
        """A cache with content key `key`, if one is saved (the newest if several)."""
        matches = [r for r in self.records() if r.key == key]
        return matches[-1] if matches else None

    def _read_record(self, name: str) -> CacheRecord:
        folder = self._cache_dir(name)
        meta_path = folder / META_FILE
        fix = f"remove it with `homer rm {name}` and re-run `homer ingest`"
        if not meta_path.is_file():
            if folder.is_dir():  # a complete cache always has metadata (it is renamed in whole)
                raise CacheError(f"{meta_path}: metadata missing (a damaged cache); {fix}")
            available = self.names()
            listing = ", ".join(available) if available else "none; run `homer ingest` first"
            raise CacheNotFoundError(f"no cache named {name!r} (existing: {listing})", available)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"{meta_path}: damaged metadata ({exc}); {fix}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise CacheError(f"{meta_path}: not homer cache metadata; {fix}")
        version = meta.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CacheError(f"{meta_path}: bad format_version {version!r}; {fix}")
        if version > FORMAT_VERSION:
            raise CacheError(
                f"{meta_path}: cache format version {version} is newer than this homer reads "
                f"({FORMAT_VERSION}); upgrade homer, or {fix}"
            )
        for field, kind in _REQUIRED_FIELDS.items():
            if field not in meta:
                raise CacheError(f"{meta_path}: metadata lacks {field!r}; {fix}")
            if not isinstance(meta[field], kind):
                raise CacheError(
                    f"{meta_path}: metadata field {field!r} is a {type(meta[field]).__name__}, "
                    f"not a {kind.__name__}; {fix}"
                )
        return CacheRecord(name=name, path=folder, meta=meta)

    # ---------------------------------------------------------------- saving

    def save(
        self,
        cache: HomerCache,
        *,
        name: str,
        key: str,
        model_id: str,
        model_fingerprint: str,
        tokenizer_fingerprint: str,
        document_sha256: str,
        source: str,
        kind: str = "text",
        page_map: list[int] | None = None,
        settings: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> CacheRecord:
        """Write `cache` atomically as `name` and return its record.

        Args:
            settings: the HOMER settings as requested (`dataclasses.asdict(HomerConfig)`); the
                resolved ones are in `cache.info.settings`.
            overwrite: replace an existing cache of that name; otherwise that is a `CacheError`.
            extra: more JSON-able facts to keep under `"extra"` (timings, for instance).

        Raises:
            CacheError: the name is invalid or taken, or the disk refused the write (nothing is
                left behind).
        """
        folder = self._cache_dir(name)
        tmp: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
            tensor_path = tmp / TENSOR_FILE
            _write_tensors(cache, tensor_path)
            meta = self._metadata(
                cache,
                name=name,
                key=key,
                model_id=model_id,
                model_fingerprint=model_fingerprint,
                tokenizer_fingerprint=tokenizer_fingerprint,
                document_sha256=document_sha256,
                source=source,
                kind=kind,
                page_map=page_map or [],
                settings=settings or {},
                tensor_path=tensor_path,
                extra=extra or {},
            )
            _write_durable(tmp / META_FILE, json.dumps(meta, indent=2, default=str).encode("utf-8"))
            tmp.chmod(0o755)
            with self._name_lock(name, exclusive=True):
                if folder.exists():
                    if not overwrite and (folder / META_FILE).is_file():
                        raise CacheError(
                            f"a cache named {name!r} already exists; choose another --name, "
                            "or pass --force to replace it"
                        )
                    self._replace(folder, tmp)
                else:
                    os.replace(tmp, folder)
                _fsync_dir(self.root)
        except OSError as exc:
            raise CacheError(_disk_message(exc, self.root)) from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved cache %s (%s)", name, folder)
        return CacheRecord(name=name, path=folder, meta=meta)

    def copy(self, src: str, dst: str) -> CacheRecord:
        """Save the cache `src` again under the name `dst` (same content, same key)."""
        record = self.record(src)
        target = self._cache_dir(dst)
        tmp: Path | None = None
        try:
            self._sweep()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
            with self._name_lock(src, exclusive=False):
                shutil.copy2(record.path / TENSOR_FILE, tmp / TENSOR_FILE)
            meta = dict(record.meta)
            meta["name"] = dst
            meta["created"] = _now()
            _write_durable(tmp / META_FILE, json.dumps(meta, indent=2, default=str).encode("utf-8"))
            tmp.chmod(0o755)
            with self._name_lock(dst, exclusive=True):
                if target.exists():
                    raise CacheError(
                        f"a cache named {dst!r} already exists; choose another --name, "
                        "or pass --force to replace it"
                    )
                os.replace(tmp, target)
        except OSError as exc:
            raise CacheError(_disk_message(exc, self.root)) from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return CacheRecord(name=dst, path=target, meta=meta)

    def _metadata(
        self,
        cache: HomerCache,
        *,
        name: str,
        key: str,
        model_id: str,
        model_fingerprint: str,
        tokenizer_fingerprint: str,
        document_sha256: str,
        source: str,
        kind: str,
        page_map: list[int],
        settings: Mapping[str, Any],
        tensor_path: Path,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        info = cache.info
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": name,
            "key": key,
            "created": _now(),
            "model": {
                "id": model_id,
                "fingerprint": model_fingerprint,
                "type": info.model_type,
            },
            "tokenizer": {"fingerprint": tokenizer_fingerprint},
            "dtype": dtype_name(cache.dtype),
            "settings": dict(settings),
            "focus": info.focus,
            "document": {
                "sha256": document_sha256,
                "source": source,
                "kind": kind,
                "page_map": list(page_map),
            },
            "tokens": {
                "document": info.document_tokens,
                "prefix": info.prefix_tokens,
                "suffix": info.suffix_tokens,
                "cache": cache.length,
            },
            "last_position": cache.last_position,
            "num_layers": cache.num_layers,
            "kv_shape": list(cache.keys[0].shape),
            "info": info.to_dict(),
            "tensor_file": TENSOR_FILE,
            "tensor_sha256": sha256_file(tensor_path),
            "tensor_bytes": tensor_path.stat().st_size,
            "extra": dict(extra),
        }

    def _replace(self, folder: Path, new: Path) -> None:
        """Put the complete cache `new` in place of the cache `folder` (name lock held).

        The old cache waits in `.swap-<pid>-*/old` until the new one is in place. If this
        process is interrupted between the two renames it puts the old one back; if it is killed
        there, `_restore_swapped` (run by the next listing) does.
        """
        swap = Path(tempfile.mkdtemp(prefix=f".swap-{os.getpid()}-", dir=self.root))
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
            lock = self._lock_path("name", name)
            with (
                contextlib.suppress(OSError, ValueError, KeyError, TypeError, CacheError),
                self._flock(lock, exclusive=True, wait=False),
            ):
                if old.is_dir() and not (self.root / name).exists():
                    os.replace(old, self.root / name)
                    logger.warning("restored cache %s after an interrupted replacement", name)

    def _sweep(self) -> None:
        """Remove temp, trash and swap folders left by processes that no longer exist."""
        if not self.root.is_dir():
            return
        self._restore_swapped()
        for child in self.root.iterdir():
            match = re.fullmatch(r"\.(tmp|trash|swap)-(\d+)-.*", child.name)
            if match and not _pid_alive(int(match.group(2))):
                logger.info("removing %s left by an interrupted write", child)
                shutil.rmtree(child, ignore_errors=True)

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
            CacheError: damaged (checksum, truncation, bad header) or from a newer homer; the
                message names the file and the fix.
        """
        with self._name_lock(name, exclusive=False):
            record = self._read_record(name)
            meta = record.meta
            fix = f"remove it with `homer rm {name}` and re-run `homer ingest`"
            self._check_fingerprints(record, model_fingerprint, tokenizer_fingerprint, model_id)
            if meta["tensor_file"] != TENSOR_FILE:
                raise CacheError(
                    f"{record.path / META_FILE}: tensor_file is {meta['tensor_file']!r}, "
                    f"not {TENSOR_FILE!r}; {fix}"
                )
            tensor_path = record.path / TENSOR_FILE
            if not tensor_path.is_file():
                raise CacheError(f"{tensor_path}: tensor file missing; {fix}")
            size = tensor_path.stat().st_size
            if size != meta.get("tensor_bytes"):
                raise CacheError(
                    f"{tensor_path}: {size} bytes, expected {meta.get('tensor_bytes')} "
                    f"(truncated or replaced); {fix}"
                )
            if sha256_file(tensor_path) != meta.get("tensor_sha256"):
                raise CacheError(f"{tensor_path}: checksum mismatch (the file is damaged); {fix}")
            tensors = _read_tensors(tensor_path, fix)
        cache = _cache_from_tensors(tensors, meta, tensor_path, fix)
        if dtype is not None and cache.dtype != dtype:
            logger.info("converting cache %s from %s to %s", name, cache.dtype, dtype)
            cache = _convert(cache, dtype, name)
        if device is not None:
            cache = cache.to(device=device)
        return cache, record

    def _check_fingerprints(
        self,
        record: CacheRecord,
        model_fingerprint: str | None,
        tokenizer_fingerprint: str | None,
        model_id: str | None,
    ) -> None:
        meta = record.meta
        saved_model = meta["model"]
        using = model_id or "the model in use"
        if (
            model_fingerprint is not None
            and saved_model.get("fingerprint") != model_fingerprint
            and model_id is not None
            and saved_model.get("id") == model_id
        ):
            # Same name, other weights: most often the same checkpoint rounded to another dtype
            # (float32 weights in float16 are not the bfloat16 weights that built the cache).
            raise CacheMismatchError(
                f"cache {record.name!r} was built with {model_id!r} in {meta['dtype']}, and the "
                f"weights loaded now differ (fingerprint {model_fingerprint}, not "
                f"{saved_model.get('fingerprint')}); ask with --dtype {meta['dtype']}, or re-run "
                "`homer ingest` with these settings"
            )
        if model_fingerprint is not None and saved_model.get("fingerprint") != model_fingerprint:
            raise CacheMismatchError(
                f"cache {record.name!r} was built with model {saved_model.get('id')!r} "
                f"(fingerprint {saved_model.get('fingerprint')}), not {using} "
                f"(fingerprint {model_fingerprint}); use --model {saved_model.get('id')} "
                "or re-run `homer ingest` with this model"
            )
        saved_tok = meta["tokenizer"].get("fingerprint")
        if tokenizer_fingerprint is not None and saved_tok != tokenizer_fingerprint:
            raise CacheMismatchError(
                f"cache {record.name!r} was built with the tokenizer of {saved_model.get('id')!r} "
                f"(fingerprint {saved_tok}), not the tokenizer of {using} "
                f"(fingerprint {tokenizer_fingerprint}); re-run `homer ingest` with this model"
            )

    # ---------------------------------------------------------------- removing

    def remove(self, name: str) -> None:
        """Delete cache `name` (raises `CacheNotFoundError` when it does not exist).

        A folder with damaged metadata can still be removed, so `homer rm` is always the fix.
        """
        folder = self._cache_dir(name)
        if not folder.is_dir():
            available = self.names()
            listing = ", ".join(available) if available else "none"
            raise CacheNotFoundError(f"no cache named {name!r} (existing: {listing})", available)
        with self._name_lock(name, exclusive=True):
            try:
                trash = Path(tempfile.mkdtemp(prefix=f".trash-{os.getpid()}-", dir=self.root))
                os.replace(folder, trash / "old")
            except OSError as exc:
                raise CacheError(_disk_message(exc, self.root, f"remove {name!r}")) from exc
            shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._lock_path("name", name).unlink()


# -------------------------------------------------------------------- tensor file


def _write_tensors(cache: HomerCache, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k.detach().to("cpu").contiguous()
        tensors[f"layers.{i}.values"] = v.detach().to("cpu").contiguous()
    tensors["token_ids"] = cache.token_ids.detach().to("cpu", torch.int64).contiguous()
    tensors["positions"] = cache.positions.detach().to("cpu", torch.int64).contiguous()
    tensors["last_logits"] = cache.last_logits.detach().to("cpu", torch.float32).contiguous()
    save_file(tensors, str(path), metadata={"format": FORMAT_NAME})
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _read_tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheError(f"{path}: not a valid safetensors file ({exc}); {fix}") from exc


def _convert(cache: HomerCache, dtype: torch.dtype, name: str) -> HomerCache:
    """`cache` with keys and values cast to `dtype`, refused if a finite value would overflow.

    Casting is what the model would have computed in that dtype up to rounding, except where a
    value does not fit (bfloat16 or float32 magnitudes beyond float16's 65504): those would turn
    into infinities and silently spoil every answer, so the cache is refused instead.
    """
    import torch

    converted = cache.to(dtype=dtype)
    for before, after in zip(
        (*cache.keys, *cache.values), (*converted.keys, *converted.values), strict=True
    ):
        if not bool(torch.isfinite(after).all()) and bool(torch.isfinite(before).all()):
            saved = dtype_name(cache.dtype)
            raise CacheError(
                f"cache {name!r} holds {saved} values too large for {dtype_name(dtype)}; "
                f"ask with --dtype {saved}"
            )
    return converted


def _cache_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path, fix: str
) -> HomerCache:
    from homer.cache import CacheInfo, HomerCache

    try:
        num_layers = int(meta["num_layers"])
        keys = [tensors[f"layers.{i}.keys"] for i in range(num_layers)]
        values = [tensors[f"layers.{i}.values"] for i in range(num_layers)]
        expected = _dtype_from_name(str(meta["dtype"]), path, fix)
        if any(t.dtype != expected for t in (*keys, *values)):
            raise CacheError(f"{path}: tensors are not {meta['dtype']} as recorded; {fix}")
        cache = HomerCache(
            keys=keys,
            values=values,
            token_ids=tensors["token_ids"],
            positions=tensors["positions"],
            last_logits=tensors["last_logits"],
            info=CacheInfo.from_dict(meta["info"]),
        )
    except KeyError as exc:
        raise CacheError(f"{path}: missing tensor or field {exc}; {fix}") from exc
    except (ValueError, TypeError) as exc:
        raise CacheError(f"{path}: inconsistent cache ({exc}); {fix}") from exc
    if cache.length != meta["tokens"].get("cache"):
        raise CacheError(f"{path}: {cache.length} tokens, metadata says otherwise; {fix}")
    return cache


# -------------------------------------------------------------------- small helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _write_durable(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _disk_message(exc: OSError, root: Path, doing: str = "save the cache") -> str:
    """One line for an `OSError` met while writing the store at `root`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"could not {doing}: no space left on the device holding {root}; free some space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"could not {doing}: {exc.strerror or 'permission denied'} in {root} "
            "(set HOMER_HOME to a writable folder?)"
        )
    return f"could not {doing} in {root}: {exc.strerror or exc}"
