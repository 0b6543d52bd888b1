"""The use-cases every front end calls: load a model, ingest a document, answer from a cache.

This is the one module that wires documents, models, the engine and the store together. The
CLI, the HTTP server and batch ingest call these functions and only parse and print around
them; a Python user gets the same "ingest once, ask many" loop:

    import homer
    model = homer.load_model()                      # the embedded model, or ModelChoice(...)
    done = homer.ingest("book.pdf", model)          # saved (or reused) under done.name
    opened = homer.open_cache(model, done.name)     # or open_cache(model) for the latest
    for piece in homer.ask(model, opened.cache, "Who betrays the captain?"):
        print(piece, end="")

Nothing here prints or reads the terminal: waiting and progress are reported through callbacks,
and refusals are typed errors (`CacheExistsError`, the store's errors) with structured fields
that a front end turns into advice about its own flags.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from homer.errors import CacheError, CacheExistsError

if TYPE_CHECKING:
    from homer.cache import HomerCache
    from homer.config import HomerConfig
    from homer.documents import Document
    from homer.generation import GenerationStream
    from homer.grounding import DocumentView, GroundedStream, Grounding
    from homer.models import ConversionCallback
    from homer.precision import Phase
    from homer.prompts import Turn
    from homer.store import CacheRecord, Store
    from homer.tree import ProgressCallback

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and how; every field `None` means homer's default.

    Attributes:
        name: the embedded default's name, a Hub id or a local folder (`None`: `$HOMER_MODEL`,
            else the embedded model).
        device: `"cpu"`, `"cuda"`, `"cuda:N"` (`None`: CUDA when available).
        dtype: `"float32"`, `"float16"`, `"bfloat16"` (`None`: chosen by `phase`).
        trust_remote_code: allow a Hub model's own Python code to run.
        phase: what the model is loaded for, `"compress"` or `"decode"`; with no `dtype` it
            picks the dtype (`homer.precision`: on the CPU bfloat16 to compress, float32 to
            decode); `None` (a model used for both): the device's default.
    """

    name: str | None = None
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    phase: Phase | None = None


@dataclass(eq=False)
class LoadedModel:
    """A model and its tokenizer, loaded once and used for many ingests and questions.

    The fingerprints are computed on first use and kept (hashing weights takes a moment).
    """

    model: Any
    tokenizer: Any
    id: str

    @cached_property
    def fingerprint(self) -> str:
        from homer.fingerprint import model_fingerprint

        return model_fingerprint(self.model)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        from homer.fingerprint import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    @property
    def dtype(self) -> Any:
        return self.model.dtype

    @property
    def device(self) -> Any:
        return self.model.device


def load_model(
    choice: ModelChoice | str | None = None, progress: ConversionCallback | None = None
) -> LoadedModel:
    """Load the model `choice` names (a `ModelChoice`, a name, or `None` for the default).

    `progress` is called while a GGUF file is hashed and converted (its first use only).

    Raises:
        ModelLoadError: it cannot be found, converted or loaded; the message names it.
    """
    from homer.models import load_model as load_weights
    from homer.models import model_id
    from homer.precision import dtype_for

    if not isinstance(choice, ModelChoice):
        choice = ModelChoice(name=choice)
    model, tokenizer = load_weights(
        choice.name,
        device=choice.device,
        dtype=dtype_for(choice.phase, choice.device, choice.dtype),
        trust_remote_code=choice.trust_remote_code,
        progress=progress,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, id=model_id(model))


# ----------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class Ingested:
    """What `ingest` did.

    Attributes:
        name: the cache's name in the store.
        record: its saved metadata.
        reused: an identical cache (same document, model, settings and focus) was already
            saved, so nothing was computed.
        seconds: compression time (0 when reused).
    """

    name: str
    record: CacheRecord
    reused: bool
    seconds: float = 0.0


def content_key_for(
    document: Document, model: LoadedModel, config: HomerConfig, focus: str | None
) -> str:
    """The store's content address of `document` compressed by `model` under `config`."""
    from homer.store import content_key

    return content_key(
        document_sha256=document.sha256,
        model_fingerprint=model.fingerprint,
        tokenizer_fingerprint=model.tokenizer_fingerprint,
        settings=config.key_settings(),
        focus=focus,
    )


def ingest(
    document: Document | str | Path,
    model: LoadedModel,
    *,
    store: Store | None = None,
    name: str | None = None,
    config: HomerConfig | None = None,
    focus: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Ingested:
    """Compress `document` into the store, or reuse the identical cache already saved there.

    Args:
        document: a loaded `Document`, or a path (`"-"` reads stdin) to load.
        model: the model that compresses (and will answer).
        store: where to save (default: the user's store).
        name: the cache's name (default: the file's stem and a short hash of the content key).
        config: HOMER's settings (default: `HomerConfig()`).
        focus: a question to keep in the suffix while compressing (query-aware).
        force: compress again and replace whatever is saved under the name.
        progress: called with the engine's `ProgressEvent`s.
        on_wait: called once if another process is ingesting the same content right now.

    Raises:
        CacheExistsError: `name` holds another document and `force` is off.
        DocumentError, ModelLoadError, CacheError, ValueError: as their names say.
    """
    from homer.compression import compress
    from homer.config import HomerConfig
    from homer.documents import Document, load_document
    from homer.store import DocumentRef, Provenance, Store, derive_name, validate_name

    if name is not None:
        validate_name(name)
    config = config or HomerConfig()
    if not isinstance(document, Document):
        document = load_document(document)
    store = store or Store()
    key = content_key_for(document, model, config, focus)
    target = name or derive_name(document.source, key)
    with store.ingest_lock(key, on_wait=on_wait):
        replace = force
        if not force:
            reused = _reusable(store, key, target, explicit_name=name is not None)
            if reused is not None:
                record = store.record(reused)
                if record.metadata.citable:
                    store.mark_used(reused)
                    return Ingested(name=reused, record=record, reused=True)
                # Saved before caches kept their sources: computed again, so it can cite.
                target, replace = reused, True
            elif store.exists(target):
                raise CacheExistsError(target, store.record(target).source)
        started = time.perf_counter()
        cache = compress(
            model.model,
            model.tokenizer,
            document.text,
            config=config,
            focus=focus,
            progress=progress,
        )
        seconds = time.perf_counter() - started
        provenance = Provenance(
            key=key,
            model_id=model.id,
            model_fingerprint=model.fingerprint,
            tokenizer_fingerprint=model.tokenizer_fingerprint,
            document=DocumentRef(
                sha256=document.sha256,
                source=document.source,
                kind=document.kind,
                page_map=tuple(document.page_map),
            ),
            settings=config.key_settings(),
            extra={"compress_seconds": round(seconds, 3), "device": str(cache.device)},
            text=document.text,
        )
        record = store.save(cache, provenance, name=target, overwrite=replace)
    store.mark_used(target)
    return Ingested(name=target, record=record, reused=False, seconds=seconds)


def _reusable(store: Store, key: str, target: str, *, explicit_name: bool) -> str | None:
    """The name of a saved cache with content `key` usable as `target`, copying if needed."""
    if store.exists(target):
        record = store.record(target)
        return target if record.key == key else None
    found = store.find(key)
    if found is None:
        return None
    if not explicit_name:
        return found.name
    store.copy(found.name, target)
    return target


# ----------------------------------------------------------------------------- answering


class StoreEmptyError(CacheError):
    """No cache is saved yet, so there is no most recent one to answer from."""

    def __init__(self) -> None:
        super().__init__("no saved caches yet; ingest a document first")


def pick_record(store: Store, name: str | None = None) -> CacheRecord:
    """The record of cache `name`, or when `name` is None of the cache last ingested, reused or
    answered from (`Store.last_used`; the most recently created if that one is gone).

    Raises:
        CacheNotFoundError: no cache of that name.
        StoreEmptyError: the store is empty.
    """
    if name is not None:
        return store.record(name)
    record = store.last_used()
    if record is None:
        raise StoreEmptyError
    return record


@dataclass(frozen=True)
class OpenedCache:
    """A saved cache loaded for `model`: its tensors (on the model's device and dtype), its
    record, and the document's text where it was saved (None: the cache cannot cite)."""

    cache: HomerCache
    record: CacheRecord
    seconds: float = field(default=0.0, compare=False)
    text: str | None = field(default=None, repr=False, compare=False)

    @property
    def citable(self) -> bool:
        """Whether answers can cite and re-read the document (a cache saved with spans and
        text: format version 2 on)."""
        return self.text is not None and self.cache.spans is not None

    @property
    def document(self) -> DocumentView | None:
        """The saved text, for `ask(..., grounding=...)`; None when the cache cannot cite."""
        from homer.grounding import DocumentView

        if not self.citable:
            return None
        assert self.text is not None
        return DocumentView(self.text, tuple(self.record.metadata.document.page_map))

    @property
    def name(self) -> str:
        return self.record.name


def open_cache(
    model: LoadedModel, name: str | None = None, *, store: Store | None = None
) -> OpenedCache:
    """Load cache `name` (default: the most recent) for `model`, checking it was built by the
    same weights and tokenizer.

    Raises:
        CacheNotFoundError, CacheMismatchError, CacheError: as the store raises them.
    """
    from homer.store import TENSOR_FILE, Store
    from homer.store.shapes import check_fits_model

    store = store or Store()
    started = time.perf_counter()
    record = pick_record(store, name)
    cache, record = store.load(
        record.name,
        model_fingerprint=model.fingerprint,
        tokenizer_fingerprint=model.tokenizer_fingerprint,
        model_id=model.id,
        dtype=model.dtype,
        device=model.device,
    )
    # Metadata and tensors rewritten together pass the store's checks; the model's shape not.
    check_fits_model(cache, model.model.config, record.path / TENSOR_FILE, record.name)
    text = store.read_text(record.name) if record.metadata.citable else None
    store.mark_used(record.name)
    return OpenedCache(cache=cache, record=record, seconds=time.perf_counter() - started, text=text)


@dataclass(frozen=True)
class Sampling:
    """How an answer is decoded: greedy at temperature 0, else nucleus sampling; decoding ends
    before the first of the `stop` strings."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_loops: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")


@overload
def ask(
    model: LoadedModel,
    cache: HomerCache,
    question: str,
    sampling: Sampling | None = None,
    history: Sequence[Turn] = (),
    *,
    grounding: None = None,
    document: DocumentView | None = None,
) -> GenerationStream: ...


@overload
def ask(
    model: LoadedModel,
    cache: HomerCache,
    question: str,
    sampling: Sampling | None = None,
    history: Sequence[Turn] = (),
    *,
    grounding: Grounding,
    document: DocumentView | None = None,
) -> GroundedStream: ...


def ask(
    model: LoadedModel,
    cache: HomerCache,
    question: str,
    sampling: Sampling | None = None,
    history: Sequence[Turn] = (),
    *,
    grounding: Grounding | None = None,
    document: DocumentView | None = None,
) -> GenerationStream | GroundedStream:
    """Answer `question` from `cache`; iterate the result for text as it is generated.

    `history` holds the conversation's earlier turns (question and answer), fed after the cache
    before `question`. The cache is never changed, so the same cache answers any number of
    questions and conversations; `cancel()` stops an answer early.

    With `grounding` (and the `document` saved with the cache, `OpenedCache.document`), the
    answer can re-read the passages the question points at, cite the passages it rests on,
    and says whether it is grounded (`homer.grounding.GroundedStream`). Without the document
    it answers plainly and says why (`GroundedStream.unavailable`).

    Raises:
        ContextOverflowError: the cache and the conversation do not fit the model's window.
    """
    from homer.generation import generate
    from homer.grounding import GroundedStream

    sampling = sampling or Sampling()
    if grounding is not None:
        return GroundedStream(
            model.model,
            model.tokenizer,
            cache,
            question,
            grounding,
            document,
            history=history,
            generation=dataclasses.asdict(sampling),
        )
    return generate(
        model.model,
        model.tokenizer,
        cache,
        question,
        history=history,
        **dataclasses.asdict(sampling),
    )
