"""Warm models and loaded caches for a long-running process: the server, a chat session.

A `WarmPool` keeps each model it loaded and the caches it opened, so a follow-up question costs
a forward pass, not an import, a model load and a cache load. It unloads what is idle, with
ollama's keep-alive meaning: a model (and the caches it opened) stays loaded `keep_alive_s`
seconds after its last request; `0` unloads it after each request, `None` (`-1` on the command
line) never. Loaded caches form an LRU bounded by a count and optionally by bytes.

Requests on one model are served one at a time: `lease` holds the model's lock for the whole
answer, so two answers never share a forward pass and never interleave. Ingest does not take
that lock: it compresses with its own copy of the model (loaded for the ingest, dropped after),
because compression switches the model's attention function to homer's capturing one for its
duration (`homer.adapter`), which an answer running at the same time on the same object would
go through. So a long ingest never stalls questions, at the price of a second copy of the
weights while it runs.

This module knows nothing about HTTP or terminals; nothing here prints.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homer.service import (
    Ingested,
    LoadedModel,
    ModelChoice,
    OpenedCache,
    ingest,
    load_model,
    open_cache,
    pick_record,
)

if TYPE_CHECKING:
    from homer.documents import Document
    from homer.precision import Phase
    from homer.store import CacheRecord, Store

logger = logging.getLogger(__name__)

#: Default keep-alive (ollama's): five minutes after the last request.
DEFAULT_KEEP_ALIVE_S = 300.0
DEFAULT_MAX_CACHES = 8

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_keep_alive(value: str | float | None) -> float | None:
    """Seconds to keep an idle model, from ollama's spellings; `None` means forever.

    `"5m"`, `"30s"`, `"1h30m"`, `"250ms"`, a plain number of seconds (`"300"`, `300`), `"0"`
    (unload after each request), any negative duration (`"-1"`, `"-1m"`: never unload).

    Raises:
        ValueError: anything else, naming the value.
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = value.strip().lower()
    negative = text.startswith("-")
    text = text.removeprefix("-")
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_RE.findall(text)
        if not parts or "".join(a + b for a, b in parts) != text:
            raise ValueError(
                f"invalid keep-alive {value!r}: use a duration such as 5m, 30s or 1h, "
                "0 to unload after each request, or -1 to never unload"
            ) from None
        seconds = sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in parts)
    return None if negative and seconds > 0 else seconds


def parse_bytes(value: str | int) -> int:
    """Bytes from `"2GB"`, `"512MiB"`, `"1.5g"` or a plain number (decimal and binary units).

    Raises:
        ValueError: not a size, or not positive.
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.fullmatch(value.strip())
        if not match:
            raise ValueError(f"invalid size {value!r}: use a number of bytes or e.g. 512MB, 2GiB")
        amount, unit = match.group(1), match.group(2).lower()
        prefix = unit[:1] if unit[:1] in "kmgt" else ""
        binary = "i" in unit
        factor = 1024 ** (" kmgt".index(prefix or " ")) if binary else _SIZE_FACTOR[prefix]
        size = int(float(amount) * factor)
    if size < 1:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class PoolSettings:
    """How a `WarmPool` loads and keeps models and caches.

    Attributes:
        keep_alive_s: seconds an idle model and its caches stay loaded; 0 unloads them after
            each request, None never.
        max_caches: most caches held loaded at once (least recently used goes first).
        max_cache_bytes: most bytes of keys and values held loaded (None: no byte bound); the
            cache a request needs is always loaded, even if it alone is larger.
        device / dtype / trust_remote_code: how models are loaded (`ModelChoice`'s meaning).
    """

    keep_alive_s: float | None = DEFAULT_KEEP_ALIVE_S
    max_caches: int = DEFAULT_MAX_CACHES
    max_cache_bytes: int | None = None
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.keep_alive_s is not None and not self.keep_alive_s >= 0:
            raise ValueError(f"keep_alive_s must be >= 0 or None, got {self.keep_alive_s}")
        if self.max_caches < 1:
            raise ValueError(f"max_caches must be at least 1, got {self.max_caches}")
        if self.max_cache_bytes is not None and self.max_cache_bytes < 1:
            raise ValueError(f"max_cache_bytes must be positive, got {self.max_cache_bytes}")

    def choice(self, name: str | None, phase: Phase | None = None) -> ModelChoice:
        """How to load model `name` for `phase`: answers hold a model loaded to decode, each
        ingest loads its own copy to compress (`homer.precision` picks their dtypes)."""
        return ModelChoice(
            name=name,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            phase=phase,
        )


@dataclass(frozen=True)
class Lease:
    """What one request holds while it answers: the model (its lock held) and the cache.

    Attributes:
        waited_s: time spent queued behind other requests on the same model.
        model_load_s / cache_load_s: time spent loading them for this request (0 when warm).
    """

    model: LoadedModel
    cache: OpenedCache
    waited_s: float
    model_load_s: float
    cache_load_s: float


@dataclass(eq=False)
class _ModelSlot:
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: LoadedModel | None = None
    users: int = 0  # requests holding or queued for `lock`
    last_used: float = 0.0


@dataclass(eq=False)
class _CacheSlot:
    model_key: str
    opened: OpenedCache
    identity: tuple[str, str]
    last_used: float

    @property
    def nbytes(self) -> int:
        return self.opened.cache.nbytes


def model_key(name: str | None) -> str:
    """One spelling per model: the embedded default's name, an absolute folder, or a Hub id."""
    from homer.models import DEFAULT_MODEL, is_embedded, resolve_model_name

    resolved = resolve_model_name(name)
    if is_embedded(resolved):
        return DEFAULT_MODEL
    local = Path(resolved).expanduser()
    return str(local.resolve()) if local.exists() else resolved


def _identity(record: CacheRecord) -> tuple[str, str]:
    """What changes when a cache is replaced under the same name (`ingest --force`)."""
    return (str(record.meta.get("tensor_sha256", "")), record.created)


class WarmPool:
    """Loaded models and caches shared by the requests of one process (thread-safe).

    Args:
        settings: keep-alive, bounds and how to load models.
        store: the cache store (default: the user's store).
        loader: loads a model (a seam for tests; default `homer.service.load_model`).
        clock: monotonic seconds (a seam for tests).
    """

    def __init__(
        self,
        settings: PoolSettings | None = None,
        *,
        store: Store | None = None,
        loader: Callable[[ModelChoice], LoadedModel] = load_model,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from homer.store import Store

        self.settings = settings or PoolSettings()
        self.store = store or Store()
        self._loader = loader
        self._clock = clock
        self._lock = threading.Lock()  # guards the two tables below, never held while computing
        self._models: dict[str, _ModelSlot] = {}
        self._caches: OrderedDict[tuple[str, str], _CacheSlot] = OrderedDict()
        self._ingest_lock = threading.Lock()

    # ---------------------------------------------------------------- answering

    def record(self, name: str | None = None) -> CacheRecord:
        """The record of cache `name` (default: the most recent); see `pick_record`."""
        return pick_record(self.store, name)

    @contextmanager
    def lease(self, name: str | None = None) -> Iterator[Lease]:
        """Hold the model that built cache `name` (default: the most recent) and that cache,
        both loaded, for one request; requests on the same model wait their turn here.

        Raises:
            CacheNotFoundError, StoreEmptyError, CacheMismatchError, CacheError,
            ModelLoadError: as `pick_record`, `load_model` and `open_cache` raise them.
        """
        record = self.record(name)
        key = model_key(record.model_id)
        with self._lock:
            slot = self._models.get(key)
            if slot is None:
                slot = self._models[key] = _ModelSlot(name=record.model_id)
            slot.users += 1
        queued = time.perf_counter()
        slot.lock.acquire()
        try:
            waited = time.perf_counter() - queued
            model_load = cache_load = 0.0
            if slot.loaded is None:
                started = time.perf_counter()
                slot.loaded = self._loader(self.settings.choice(record.model_id, "decode"))
                model_load = time.perf_counter() - started
                logger.info("loaded model %s in %.2f s", record.model_id, model_load)
            opened, cache_load = self._cache(key, slot.loaded, record)
            yield Lease(slot.loaded, opened, waited, model_load, cache_load)
        finally:
            with self._lock:
                slot.users -= 1
                slot.last_used = self._clock()
                idle = slot.users == 0
            if idle and self.settings.keep_alive_s == 0:
                self._unload(key, slot)
            slot.lock.release()

    def _cache(
        self, key: str, loaded: LoadedModel, record: CacheRecord
    ) -> tuple[OpenedCache, float]:
        """Cache `record` for model `key`, from the LRU or loaded (then the LRU is trimmed)."""
        entry_key = (key, record.name)
        identity = _identity(record)
        with self._lock:
            slot = self._caches.get(entry_key)
            if slot is not None and slot.identity == identity:
                slot.last_used = self._clock()
                self._caches.move_to_end(entry_key)
                return slot.opened, 0.0
        started = time.perf_counter()
        opened = open_cache(loaded, record.name, store=self.store)
        seconds = time.perf_counter() - started
        with self._lock:
            self._caches[entry_key] = _CacheSlot(
                key, opened, _identity(opened.record), self._clock()
            )
            self._caches.move_to_end(entry_key)
            dropped = self._trim()
        for name in dropped:
            logger.info("unloaded cache %s (over the pool's bounds)", name)
        return opened, seconds

    def _trim(self) -> list[str]:
        """Drop least recently used caches beyond the bounds, keeping the newest (lock held)."""
        dropped = []
        while len(self._caches) > 1 and (
            len(self._caches) > self.settings.max_caches
            or (
                self.settings.max_cache_bytes is not None
                and self.cache_bytes_unlocked() > self.settings.max_cache_bytes
            )
        ):
            (_, name), _slot = self._caches.popitem(last=False)
            dropped.append(name)
        return dropped

    # ---------------------------------------------------------------- ingest

    def ingest(
        self, document: Document | str | Path, model: str | None = None, **options: Any
    ) -> Ingested:
        """`homer.service.ingest` with a copy of `model` loaded for this ingest alone.

        One ingest runs at a time (each holds a copy of the weights and the tree's memory);
        answers go on meanwhile. Keyword options are `service.ingest`'s.
        """
        from homer.documents import Document, load_document

        if not isinstance(document, Document):  # a bad path fails before a model is loaded
            document = load_document(document)
        with self._ingest_lock:
            loaded = self._loader(self.settings.choice(model, "compress"))
            try:
                return ingest(document, loaded, store=self.store, **options)
            finally:
                del loaded
                _release_memory()

    def forget(self, name: str) -> None:
        """Drop cache `name` from the LRU (after it was removed or replaced in the store)."""
        with self._lock:
            for entry_key in [k for k in self._caches if k[1] == name]:
                del self._caches[entry_key]

    # ---------------------------------------------------------------- keeping memory in check

    def preload(self, name: str | None = None) -> LoadedModel:
        """Load model `name` (default: `$HOMER_MODEL` or the embedded one) ahead of requests."""
        key = model_key(name)
        with self._lock:
            slot = self._models.get(key)
            if slot is None:
                slot = self._models[key] = _ModelSlot(name=name or key)
            slot.users += 1
        with slot.lock:
            try:
                if slot.loaded is None:
                    slot.loaded = self._loader(self.settings.choice(name, "decode"))
                return slot.loaded
            finally:
                with self._lock:
                    slot.users -= 1
                    slot.last_used = self._clock()

    def reap(self) -> list[str]:
        """Unload models and caches idle for longer than the keep-alive; return their names."""
        keep = self.settings.keep_alive_s
        if keep is None:
            return []
        now = self._clock()
        gone: list[str] = []
        with self._lock:
            stale = [k for k, s in self._caches.items() if now - s.last_used >= keep]
            for entry_key in stale:
                del self._caches[entry_key]
                gone.append(f"cache {entry_key[1]}")
            idle = [
                (k, s)
                for k, s in self._models.items()
                if s.loaded is not None and s.users == 0 and now - s.last_used >= keep
            ]
        for key, slot in idle:
            if slot.lock.acquire(blocking=False):  # a request that just arrived keeps it
                try:
                    if slot.users == 0 and slot.loaded is not None:
                        self._unload(key, slot)
                        gone.append(f"model {slot.name}")
                finally:
                    slot.lock.release()
        if gone:
            _release_memory()
        return gone

    def _unload(self, key: str, slot: _ModelSlot) -> None:
        """Drop a model and its caches (the slot's lock held)."""
        slot.loaded = None
        with self._lock:
            for entry_key in [k for k, s in self._caches.items() if s.model_key == key]:
                del self._caches[entry_key]
        _release_memory()
        logger.info("unloaded model %s", slot.name)

    def unload_all(self) -> None:
        """Drop every model and cache (waits for requests in flight to finish)."""
        with self._lock:
            slots = list(self._models.items())
        for key, slot in slots:
            with slot.lock:
                if slot.loaded is not None:
                    self._unload(key, slot)
        with self._lock:
            self._caches.clear()
        _release_memory()

    # ---------------------------------------------------------------- facts

    def cache_bytes_unlocked(self) -> int:
        return sum(s.nbytes for s in self._caches.values())

    def loaded(self) -> dict[str, Any]:
        """What is loaded now: model names, cache names and the caches' bytes."""
        with self._lock:
            return {
                "models": [s.name for s in self._models.values() if s.loaded is not None],
                "caches": [name for _, name in self._caches],
                "cache_bytes": self.cache_bytes_unlocked(),
            }


def _release_memory() -> None:
    """Give freed tensors back: collect cycles, and empty CUDA's cache where torch uses it."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
