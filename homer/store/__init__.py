"""Saved caches on disk, in three parts.

- `homer.store.format`: the cache file format: `CacheMeta` (what meta.json holds, typed), writing
  and reading a cache's two files, versioned by `FORMAT_VERSION`, checked field by field.
- `homer.store.store`: the store: names, locks, atomic replacement, listing, loading, copying
  and removing caches in a folder (`Store`, `CacheRecord`).
- `homer.store.fs`: crash-safe filesystem steps (durable writes, fsync, temp-and-rename, sweeping
  work files left by dead processes), shared with calibration.

The names below are the public ones; importing this package does not import torch.
"""

from __future__ import annotations

from homer.errors import (
    CacheDamagedError,
    CacheDtypeError,
    CacheExistsError,
    CacheMismatchError,
    CacheNotFoundError,
    CacheVersionError,
    StoreAccessError,
)
from homer.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    TENSOR_FILE,
    TEXT_FILE,
    CacheMeta,
    DocumentRef,
    ModelRef,
    Provenance,
    TextRef,
    TokenCounts,
    content_key,
    dtype_name,
    sha256_file,
)
from homer.store.store import CacheRecord, Store, derive_name, validate_name

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_FILE",
    "TENSOR_FILE",
    "TEXT_FILE",
    "CacheDamagedError",
    "CacheDtypeError",
    "CacheExistsError",
    "CacheMeta",
    "CacheMismatchError",
    "CacheNotFoundError",
    "CacheRecord",
    "CacheVersionError",
    "DocumentRef",
    "ModelRef",
    "Provenance",
    "Store",
    "StoreAccessError",
    "TextRef",
    "TokenCounts",
    "content_key",
    "derive_name",
    "dtype_name",
    "sha256_file",
    "validate_name",
]
