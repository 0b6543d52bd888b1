"""The cache file format: what a saved cache's two files hold, and how they are written and read.

A cache is a folder holding two or three files:

    meta.json            `CacheMeta` as JSON: "format": "homer-cache", "format_version", where the
                         cache came from, its sizes, and the size and SHA-256 of the other files
    tensors.safetensors  `layers.<i>.keys` / `layers.<i>.values` in the model's dtype, `token_ids`
                         and `positions` (int64), `last_logits` (float32), and from version 2
                         `spans` (`(T, 2)` int64: each kept token's characters in the document)
    document.txt.gz      (version 2) the document's text, gzip-compressed: what citations quote
                         and re-reading reads

Versions: every meta.json carries `format_version`. A reader exists for each version this code
knows (`_parse_v1`, `_parse_v2`), so caches written by an older homer keep loading (a version 1
cache answers but cannot cite: it has no spans and no text); a newer
version is refused with `CacheVersionError`, never guessed at. Reading validates every field's
type (a string where a count belongs, a missing field, a wrong format) and refuses what does not
fit with `CacheDamagedError`, naming the file. Nothing here can execute code: meta.json is read
with `json`, the tensors with safetensors after their checksum is verified.

This module knows nothing about folders of caches, names, locks or renames (`homer.store.store`),
nor about how a cache is computed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homer.errors import (
    CacheDamagedError,
    CacheDtypeError,
    CacheMismatchError,
    CacheUnreadableError,
    CacheVersionError,
)
from homer.store import fs

if TYPE_CHECKING:  # torch is imported lazily so `homer list` / `show` / `rm` stay quick
    import torch

    from homer.cache import HomerCache

#: Version of the format written by this code. Older versions are read; newer ones are refused.
FORMAT_VERSION = 2
FORMAT_NAME = "homer-cache"
META_FILE = "meta.json"
TENSOR_FILE = "tensors.safetensors"
TEXT_FILE = "document.txt.gz"

_HASH_BLOCK = 1 << 22
#: How deep the free-form parts of the metadata (settings, extra) may nest.
_MAX_DEPTH = 32


# -------------------------------------------------------------------- the metadata


@dataclass(frozen=True)
class ModelRef:
    """The model a cache was built with: its id (Hub id or folder), fingerprint and type."""

    id: str
    fingerprint: str
    type: str = ""


@dataclass(frozen=True)
class DocumentRef:
    """The document a cache holds: its SHA-256, where it came from, its kind and PDF page map."""

    sha256: str
    source: str
    kind: str = "text"
    page_map: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of the document, of the cache, and of the prompt's prefix and suffix."""

    document: int
    prefix: int
    suffix: int
    cache: int


@dataclass(frozen=True)
class Provenance:
    """What a cache was built from, as its builder knows it: all `Store.save` needs besides the
    cache itself and its name.

    Attributes:
        key: the content key (`content_key`).
        model_id / model_fingerprint / tokenizer_fingerprint: the model and tokenizer used.
        document: the document compressed.
        settings: the HOMER settings as requested (the resolved ones are in the cache's info).
        extra: more JSON-able facts to keep under `"extra"` (timings, for instance).
        text: the document's text, saved beside the tensors so answers can quote it; None saves
            none (the cache then cannot cite).
    """

    key: str
    model_id: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    document: DocumentRef
    settings: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    text: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TextRef:
    """The saved document text: its file, the file's size and SHA-256, and its length in
    characters."""

    file: str
    sha256: str
    bytes: int
    chars: int


@dataclass(frozen=True)
class CacheMeta:
    """Everything meta.json holds, typed.

    Attributes:
        name: the name it was saved under.
        key: its content key.
        created: ISO 8601 UTC time of saving, in milliseconds.
        model / tokenizer_fingerprint / dtype: what built it, in which dtype.
        settings: the HOMER settings as requested; `info["settings"]`: as resolved.
        focus: the question kept in mind while compressing, or None.
        document: what it holds.
        tokens: token counts.
        last_position / num_layers / kv_shape: the cache's shape (`kv_shape` of layer 0's keys).
        info: `CacheInfo.to_dict()`.
        tensor_file / tensor_sha256 / tensor_bytes: the tensor file and its checksum and size.
        extra: free-form facts (compression time, device).
        text: the saved document text (version 2), or None.
        spans: the tensor file holds each kept token's character span (version 2).
        format_version: the version it was written in.
    """

    name: str
    key: str
    created: str
    model: ModelRef
    tokenizer_fingerprint: str
    dtype: str
    settings: dict[str, Any]
    focus: str | None
    document: DocumentRef
    tokens: TokenCounts
    last_position: int
    num_layers: int
    kv_shape: tuple[int, ...]
    info: dict[str, Any]
    tensor_file: str
    tensor_sha256: str
    tensor_bytes: int
    extra: dict[str, Any]
    text: TextRef | None = None
    spans: bool = False
    format_version: int = FORMAT_VERSION

    @property
    def citable(self) -> bool:
        """Whether answers from this cache can cite and re-read the document."""
        return self.spans and self.text is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object meta.json holds (its version's layout, in its order)."""
        data = self._v1_dict()
        if self.format_version >= 2:
            data["spans"] = self.spans
            data["text"] = (
                None
                if self.text is None
                else {
                    "file": self.text.file,
                    "sha256": self.text.sha256,
                    "bytes": self.text.bytes,
                    "chars": self.text.chars,
                }
            )
        return data

    def _v1_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "name": self.name,
            "key": self.key,
            "created": self.created,
            "model": {
                "id": self.model.id,
                "fingerprint": self.model.fingerprint,
                "type": self.model.type,
            },
            "tokenizer": {"fingerprint": self.tokenizer_fingerprint},
            "dtype": self.dtype,
            "settings": dict(self.settings),
            "focus": self.focus,
            "document": {
                "sha256": self.document.sha256,
                "source": self.document.source,
                "kind": self.document.kind,
                "page_map": list(self.document.page_map),
            },
            "tokens": {
                "document": self.tokens.document,
                "prefix": self.tokens.prefix,
                "suffix": self.tokens.suffix,
                "cache": self.tokens.cache,
            },
            "last_position": self.last_position,
            "num_layers": self.num_layers,
            "kv_shape": list(self.kv_shape),
            "info": dict(self.info),
            "tensor_file": self.tensor_file,
            "tensor_sha256": self.tensor_sha256,
            "tensor_bytes": self.tensor_bytes,
            "extra": dict(self.extra),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, default=str).encode("utf-8")

    def renamed(self, name: str, created: str) -> CacheMeta:
        """The same cache saved again under `name` at `created`."""
        return replace(self, name=name, created=created)


def build_meta(
    cache: HomerCache,
    provenance: Provenance,
    *,
    name: str,
    created: str,
    tensor_path: Path,
    text_path: Path | None = None,
) -> CacheMeta:
    """The metadata of `cache`, whose tensor file has been written to `tensor_path` (and the
    document's text to `text_path`, if any).

    It goes through JSON once, so what is returned equals what a later read gives back.
    """
    info = cache.info
    meta = CacheMeta(
        name=name,
        key=provenance.key,
        created=created,
        model=ModelRef(
            id=provenance.model_id, fingerprint=provenance.model_fingerprint, type=info.model_type
        ),
        tokenizer_fingerprint=provenance.tokenizer_fingerprint,
        dtype=dtype_name(cache.dtype),
        settings=dict(provenance.settings),
        focus=info.focus,
        document=provenance.document,
        tokens=TokenCounts(
            document=info.document_tokens,
            prefix=info.prefix_tokens,
            suffix=info.suffix_tokens,
            cache=cache.length,
        ),
        last_position=cache.last_position,
        num_layers=cache.num_layers,
        kv_shape=tuple(cache.keys[0].shape),
        info=info.to_dict(),
        tensor_file=TENSOR_FILE,
        tensor_sha256=sha256_file(tensor_path),
        tensor_bytes=tensor_path.stat().st_size,
        extra=dict(provenance.extra),
        text=None
        if text_path is None or provenance.text is None
        else TextRef(
            file=TEXT_FILE,
            sha256=sha256_file(text_path),
            bytes=text_path.stat().st_size,
            chars=len(provenance.text),
        ),
        spans=cache.spans is not None,
    )
    return parse_meta(json.loads(meta.to_json()), tensor_path.parent / META_FILE)


# -------------------------------------------------------------------- reading the metadata


def read_meta(folder: Path, name: str | None = None) -> CacheMeta:
    """The metadata of the cache in `folder`, checked field by field.

    Raises:
        CacheDamagedError: missing, unreadable, not JSON, not homer's, or a field missing or of
            the wrong type.
        CacheVersionError: written by a newer homer.
    """
    path = folder / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise CacheDamagedError(path, "metadata missing (a damaged cache)", name) from exc
    except PermissionError as exc:
        raise CacheUnreadableError(path, f"cannot be read ({exc.strerror})", name) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheDamagedError(path, f"damaged metadata ({exc})", name) from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CacheDamagedError(path, f"damaged metadata ({exc})", name) from exc
    return parse_meta(data, path, name)


def saved_name(folder: Path) -> str:
    """The name the cache in `folder` was saved under, read leniently: all that putting back a
    cache whose replacement was interrupted needs, even if other fields are damaged.

    Raises:
        CacheDamagedError: no name can be read.
    """
    path = folder / META_FILE
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    except (OSError, ValueError, RecursionError, TypeError, KeyError) as exc:
        raise CacheDamagedError(path, f"no name in the metadata ({exc})") from exc
    if not isinstance(name, str):
        raise CacheDamagedError(path, "no name in the metadata")
    return name


def parse_meta(data: Any, path: Path, name: str | None = None) -> CacheMeta:
    """`CacheMeta` from the JSON object read from `path` (see `read_meta`)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CacheDamagedError(path, "not homer cache metadata", name)
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CacheDamagedError(path, f"bad format_version {version!r}", name)
    if version > FORMAT_VERSION:
        raise CacheVersionError(path, version, FORMAT_VERSION, name)
    try:
        return _READERS[version](data)
    except _Invalid as exc:
        raise CacheDamagedError(path, str(exc), name) from None


class _Invalid(Exception):
    """A field is missing or of the wrong type (the message says which)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _kind_of(value: Any) -> str:
    return "null" if value is None else _a(type(value).__name__)


def _get(obj: dict[str, Any], key: str, where: str, kind: type, *, optional: bool = False) -> Any:
    """`obj[key]`, checked to be a `kind` (`int` excludes booleans); None when optional."""
    label = f"{where}.{key}" if where else key
    if key not in obj:
        if optional:
            return None
        raise _Invalid(f"metadata lacks {label!r}")
    value = obj[key]
    if value is None and optional:
        return None
    fits = _is_int(value) if kind is int else isinstance(value, kind)
    if not fits:
        raise _Invalid(f"metadata field {label!r} is {_kind_of(value)}, not {_a(kind.__name__)}")
    if kind is dict:
        _check_depth(value, label)
    return value


def _ints(obj: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    values = _get(obj, key, where, list)
    if not all(_is_int(v) for v in values):
        label = f"{where}.{key}" if where else key
        raise _Invalid(f"metadata field {label!r} holds something other than integers")
    return tuple(values)


def _check_depth(value: Any, label: str, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise _Invalid(f"metadata field {label!r} is nested more than {_MAX_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            _check_depth(child, label, depth + 1)


def _parse_v1(data: dict[str, Any]) -> CacheMeta:
    # The fields every reader needs come first, so a damaged cache names the most basic fault.
    key = _get(data, "key", "", str)
    model = _get(data, "model", "", dict)
    tokenizer = _get(data, "tokenizer", "", dict)
    dtype = _get(data, "dtype", "", str)
    tensor_file = _get(data, "tensor_file", "", str)
    tokens = _get(data, "tokens", "", dict)
    document = _get(data, "document", "", dict)
    info = _get(data, "info", "", dict)
    for field_name, kind in _INFO_FIELDS.items():
        _get(info, field_name, "info", kind, optional=field_name in _INFO_OPTIONAL)
    return CacheMeta(
        name=_get(data, "name", "", str),
        key=key,
        created=_get(data, "created", "", str),
        model=ModelRef(
            id=_get(model, "id", "model", str),
            fingerprint=_get(model, "fingerprint", "model", str),
            type=_get(model, "type", "model", str),
        ),
        tokenizer_fingerprint=_get(tokenizer, "fingerprint", "tokenizer", str),
        dtype=dtype,
        settings=_get(data, "settings", "", dict),
        focus=_get(data, "focus", "", str, optional=True),
        document=DocumentRef(
            sha256=_get(document, "sha256", "document", str),
            source=_get(document, "source", "document", str),
            kind=_get(document, "kind", "document", str),
            page_map=_ints(document, "page_map", "document"),
        ),
        tokens=TokenCounts(
            document=_get(tokens, "document", "tokens", int),
            prefix=_get(tokens, "prefix", "tokens", int),
            suffix=_get(tokens, "suffix", "tokens", int),
            cache=_get(tokens, "cache", "tokens", int),
        ),
        last_position=_get(data, "last_position", "", int),
        num_layers=_get(data, "num_layers", "", int),
        kv_shape=_ints(data, "kv_shape", ""),
        info=info,
        tensor_file=tensor_file,
        tensor_sha256=_get(data, "tensor_sha256", "", str),
        tensor_bytes=_get(data, "tensor_bytes", "", int),
        extra=_get(data, "extra", "", dict),
        format_version=1,
    )


def _parse_v2(data: dict[str, Any]) -> CacheMeta:
    text = _get(data, "text", "", dict, optional=True)
    return replace(
        _parse_v1(data),
        spans=_get(data, "spans", "", bool),
        text=None
        if text is None
        else TextRef(
            file=_get(text, "file", "text", str),
            sha256=_get(text, "sha256", "text", str),
            bytes=_get(text, "bytes", "text", int),
            chars=_get(text, "chars", "text", int),
        ),
        format_version=2,
    )


#: `CacheInfo.to_dict()`'s fields and types; those `CacheInfo.from_dict` does not require are
#: optional.
_INFO_FIELDS: dict[str, type] = {
    "prefix_text": str,
    "suffix_text": str,
    "focus": str,
    "document_tokens": int,
    "prefix_tokens": int,
    "suffix_tokens": int,
    "num_chunks": int,
    "height": int,
    "settings": dict,
    "model_type": str,
}
_INFO_OPTIONAL = frozenset({"focus", "settings", "model_type"})

_READERS = {1: _parse_v1, 2: _parse_v2}


# -------------------------------------------------------------------- the tensor file


def write_tensors(cache: HomerCache, path: Path) -> None:
    """Write `cache`'s tensors to `path` (safetensors, moved to the CPU) and fsync the file."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k.detach().to("cpu").contiguous()
        tensors[f"layers.{i}.values"] = v.detach().to("cpu").contiguous()
    tensors["token_ids"] = cache.token_ids.detach().to("cpu", torch.int64).contiguous()
    tensors["positions"] = cache.positions.detach().to("cpu", torch.int64).contiguous()
    tensors["last_logits"] = cache.last_logits.detach().to("cpu", torch.float32).contiguous()
    if cache.spans is not None:
        tensors["spans"] = cache.spans.detach().to("cpu", torch.int64).contiguous()
    try:
        save_file(tensors, str(path), metadata={"format": FORMAT_NAME})
    except Exception as exc:  # safetensors reports a full disk in a SafetensorError's text
        error = fs.os_error_in(exc)
        if error is None or error is exc:
            raise
        error.filename = str(path)
        raise error from exc
    fs.fsync_file(path)


def read_cache(folder: Path, meta: CacheMeta, name: str | None = None) -> HomerCache:
    """The cache whose metadata `meta` was read from `folder`, checked against it.

    The tensor file's size and SHA-256 are verified before it is parsed.

    Raises:
        CacheDamagedError: the tensor file is missing, truncated, changed, not safetensors, or
            its tensors do not match the metadata (dtype, layers, length).
    """
    path = _checked_tensor_file(folder, meta, name)
    return _cache_from_tensors(_read_tensors(path, name), meta, path, name)


def _checked_tensor_file(folder: Path, meta: CacheMeta, name: str | None) -> Path:
    """The tensor file of the cache in `folder`, its size and SHA-256 checked against `meta`."""
    if meta.tensor_file != TENSOR_FILE:
        raise CacheDamagedError(
            folder / META_FILE, f"tensor_file is {meta.tensor_file!r}, not {TENSOR_FILE!r}", name
        )
    path = folder / TENSOR_FILE
    if not path.is_file():
        raise CacheDamagedError(path, "tensor file missing", name)
    try:
        size = path.stat().st_size
        if size != meta.tensor_bytes:
            raise CacheDamagedError(
                path, f"{size} bytes, expected {meta.tensor_bytes} (truncated or replaced)", name
            )
        if sha256_file(path) != meta.tensor_sha256:
            raise CacheDamagedError(path, "checksum mismatch (the file is damaged)", name)
    except PermissionError as exc:
        raise CacheUnreadableError(path, f"cannot be read ({exc.strerror})", name) from exc
    return path


def write_text(text: str, path: Path) -> None:
    """Write the document's text to `path`, gzip-compressed (no timestamp, so the same text
    gives the same bytes), and fsync it."""
    import gzip

    fs.write_durable(path, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))


def read_text(folder: Path, meta: CacheMeta, name: str | None = None) -> str | None:
    """The document text saved with the cache in `folder`, checked against `meta`; None for a
    cache saved without it.

    Raises:
        CacheDamagedError: the text file is missing, changed, or not gzip'd UTF-8 text.
    """
    import gzip
    import zlib

    if meta.text is None:
        return None
    if meta.text.file != TEXT_FILE:
        raise CacheDamagedError(
            folder / META_FILE, f"text file is {meta.text.file!r}, not {TEXT_FILE!r}", name
        )
    path = folder / TEXT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CacheDamagedError(path, "document text missing", name) from exc
    except PermissionError as exc:
        raise CacheUnreadableError(path, f"cannot be read ({exc.strerror})", name) from exc
    if len(data) != meta.text.bytes or hashlib.sha256(data).hexdigest() != meta.text.sha256:
        raise CacheDamagedError(path, "checksum mismatch (the file is damaged)", name)
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise CacheDamagedError(path, f"not gzip'd text ({exc})", name) from exc
    if len(text) != meta.text.chars:
        raise CacheDamagedError(path, f"{len(text)} characters, metadata says otherwise", name)
    return text


def read_spans(folder: Path, meta: CacheMeta, name: str | None = None) -> torch.Tensor | None:
    """The `(T, 2)` spans of the cache in `folder` alone (the tensor file checked first, the
    keys and values never read), or None for a cache saved without them.

    Raises:
        CacheDamagedError: as `read_cache` raises it.
    """
    if not meta.spans:
        return None
    from safetensors import SafetensorError, safe_open

    path = _checked_tensor_file(folder, meta, name)
    try:
        with safe_open(str(path), framework="pt") as fh:  # type: ignore[no-untyped-call]
            spans: torch.Tensor = fh.get_tensor("spans")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheDamagedError(path, f"no readable spans ({exc})", name) from exc
    if tuple(spans.shape) != (meta.tokens.cache, 2):
        raise CacheDamagedError(path, f"spans of shape {tuple(spans.shape)}", name)
    return spans


def _read_tensors(path: Path, name: str | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheDamagedError(path, f"not a valid safetensors file ({exc})", name) from exc


def _cache_from_tensors(
    tensors: dict[str, torch.Tensor], meta: CacheMeta, path: Path, name: str | None
) -> HomerCache:
    from homer.cache import CacheInfo, HomerCache

    expected = _dtype_from_name(meta.dtype, path, name)
    try:
        keys = [tensors[f"layers.{i}.keys"] for i in range(meta.num_layers)]
        values = [tensors[f"layers.{i}.values"] for i in range(meta.num_layers)]
        if any(t.dtype != expected for t in (*keys, *values)):
            raise CacheDamagedError(path, f"tensors are not {meta.dtype} as recorded", name)
        # Shapes are data too: a forged one would fail deep inside attention.
        # (Values may have another head size than keys, but one shape in every layer.)
        shapes = {tuple(t.shape) for t in keys} | {tuple(t.shape)[:-1] for t in values}
        value_shapes = {tuple(t.shape) for t in values}
        kv_shape = tuple(meta.kv_shape)
        if shapes != {kv_shape, kv_shape[:-1]} or len(value_shapes) != 1:
            raise CacheDamagedError(
                path, f"key/value shapes {sorted(shapes)} differ from {list(kv_shape)}", name
            )
        if any(tensors[k].dim() != 1 for k in ("token_ids", "positions", "last_logits")):
            raise CacheDamagedError(path, "token_ids, positions and last_logits must be 1-D", name)
        cache = HomerCache(
            keys=keys,
            values=values,
            token_ids=tensors["token_ids"],
            positions=tensors["positions"],
            last_logits=tensors["last_logits"],
            info=CacheInfo.from_dict(meta.info),
            spans=tensors["spans"] if meta.spans else None,
        )
    except KeyError as exc:
        raise CacheDamagedError(path, f"missing tensor or field {exc}", name) from exc
    except (ValueError, TypeError) as exc:
        raise CacheDamagedError(path, f"inconsistent cache ({exc})", name) from exc
    if cache.length != meta.tokens.cache:
        raise CacheDamagedError(path, f"{cache.length} tokens, metadata says otherwise", name)
    return cache


def _dtype_from_name(dtype: str, path: Path, name: str | None) -> torch.dtype:
    import torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise CacheDamagedError(path, f"unknown dtype {dtype!r} in the cache metadata", name)
    return value


# -------------------------------------------------------------------- using a cache


def check_built_with(
    meta: CacheMeta,
    name: str,
    *,
    model_fingerprint: str | None,
    tokenizer_fingerprint: str | None,
    model_id: str | None,
) -> None:
    """Refuse a cache built with another model or tokenizer than the ones given (None: unchecked).

    Raises:
        CacheMismatchError: naming the field, both fingerprints and both models.
    """
    checks = (
        ("model", meta.model.fingerprint, model_fingerprint),
        ("tokenizer", meta.tokenizer_fingerprint, tokenizer_fingerprint),
    )
    for field_name, saved, current in checks:
        if current is not None and saved != current:
            raise CacheMismatchError(
                name,
                field_name,
                saved=saved,
                current=current,
                model_id=meta.model.id,
                using=model_id,
                dtype=meta.dtype,
            )


def convert(cache: HomerCache, dtype: torch.dtype, name: str) -> HomerCache:
    """`cache` with keys and values cast to `dtype`, refused if a finite value would overflow.

    Casting is what the model would have computed in that dtype up to rounding, except where a
    value does not fit (bfloat16 or float32 magnitudes beyond float16's 65504): those would turn
    into infinities and silently spoil every answer, so the cache is refused instead.

    Raises:
        CacheDtypeError: naming the dtype the cache was saved in.
    """
    import torch

    converted = cache.to(dtype=dtype)
    for before, after in zip(
        (*cache.keys, *cache.values), (*converted.keys, *converted.values), strict=True
    ):
        if not bool(torch.isfinite(after).all()) and bool(torch.isfinite(before).all()):
            raise CacheDtypeError(name, dtype_name(cache.dtype), dtype_name(dtype))
    return converted


# -------------------------------------------------------------------- small helpers


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
            # Fixed at 1: format 2 only adds what citing needs, so a key names the same
            # tensors as before (an older cache found by key is upgraded by `homer.ingest`).
            "format_version": 1,
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


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
