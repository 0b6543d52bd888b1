"""A library of documents: ingest many at once, and ask a question across several.

Built on the single-document use-cases of `homer.service`; like them it prints nothing and
reports progress through callbacks.

- `find_documents` turns folders, files and globs into a stable, duplicate-free list of files.
- `ingest_many` ingests them one by one into the store; a document already saved is reused, and
  one that fails is reported while the rest go on. Given a `shard` (this process's index and the
  process count, as `accelerate launch` provides them) it takes only its share, so several
  processes on several devices or machines split a library, coordinating only through the
  store's locks.
- `choose_caches` ranks saved caches by how well their kept text matches a question (BM25), and
  `open_joined` loads several caches and joins them into one (`homer.joining`).
"""

from __future__ import annotations

import dataclasses
import glob
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from homer.errors import CacheError, HomerError

if TYPE_CHECKING:
    from homer.cache import HomerCache
    from homer.config import HomerConfig
    from homer.grounding import DocumentView
    from homer.service import LoadedModel
    from homer.store import CacheRecord, Store
    from homer.tree import ProgressCallback

#: File endings a folder is searched for (other files in a folder are passed over; a file named
#: on its own is always read).
DOCUMENT_SUFFIXES = frozenset({".pdf", ".txt", ".md", ".markdown", ".rst", ".text", ".log"})


class NoDocumentsError(HomerError):
    """The paths given hold no document to ingest."""


def find_documents(paths: Sequence[str | Path]) -> list[Path]:
    """The files `paths` name: files as given, folders searched recursively for documents
    (`DOCUMENT_SUFFIXES`, hidden files and folders skipped), globs expanded. Sorted within each
    folder or glob, each file once, in the order given.

    Raises:
        NoDocumentsError: a path does not exist and matches nothing, or nothing was found.
    """
    found: dict[Path, None] = {}
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden and child.suffix.lower() in DOCUMENT_SUFFIXES:
                    found.setdefault(child, None)
        elif path.exists():
            found.setdefault(path, None)
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise NoDocumentsError(f"{item}: no such file, folder or matching files")
            for match in matches:
                if Path(match).is_file():
                    found.setdefault(Path(match), None)
    if not found:
        listed = ", ".join(str(p) for p in paths)
        raise NoDocumentsError(
            f"no documents in {listed} (looked for {', '.join(sorted(DOCUMENT_SUFFIXES))})"
        )
    return list(found)


def shard_of(items: Sequence[Path], index: int, count: int) -> list[Path]:
    """The share of `items` process `index` of `count` takes: every `count`-th from `index`, so
    long and short documents spread evenly and each item goes to exactly one process."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return list(items[index::count])


Status = Literal["saved", "reused", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one document of a batch.

    Attributes:
        path: the file.
        status: `"saved"` (compressed now), `"reused"` (already in the store) or `"failed"`.
        name: the cache's name (None when it failed).
        error: why it failed (one line), else None.
        seconds: time spent on it, reading included.
        document_tokens / cache_tokens: from the saved record (0 when it failed).
    """

    path: Path
    status: Status
    name: str | None = None
    error: str | None = None
    seconds: float = 0.0
    document_tokens: int = 0
    cache_tokens: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "status": self.status,
            "name": self.name,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "document_tokens": self.document_tokens,
            "cache_tokens": self.cache_tokens,
        }


def ingest_many(
    paths: Sequence[Path],
    model: LoadedModel,
    *,
    store: Store | None = None,
    config: HomerConfig | None = None,
    force: bool = False,
    shard: tuple[int, int] = (0, 1),
    on_start: Callable[[int, int, Path], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    progress: ProgressCallback | None = None,
) -> list[Outcome]:
    """Ingest each of `paths` (this shard's share) into the store, one cache per document.

    A document that fails (unreadable, empty, too long for memory...) is reported in its
    `Outcome` and the others go on; one already saved with this model and settings is reused,
    so running the same batch again finishes what an interrupted run left.

    Args:
        force: compress every document again, replacing its saved cache.
        shard: `(index, count)`: take every `count`-th document from `index` (`shard_of`).
        on_start: called with (position in this shard, shard size, path) before each document.
        on_done: called with each document's `Outcome`.
        progress: the engine's progress events of the document being compressed.
    """
    from homer.service import ingest
    from homer.store import Store

    store = store or Store()
    mine = shard_of(paths, *shard)
    outcomes = []
    for position, path in enumerate(mine):
        if on_start is not None:
            on_start(position, len(mine), path)
        began = time.perf_counter()
        try:
            done = ingest(path, model, store=store, config=config, force=force, progress=progress)
        except (HomerError, ValueError, OSError, MemoryError, RuntimeError) as exc:
            # One document's failure is its own: report it and go on with the rest. Anything
            # else is a bug, and stops the batch.
            outcome = Outcome(path, "failed", error=_one_line(exc))
        else:
            outcome = Outcome(
                path,
                "reused" if done.reused else "saved",
                name=done.name,
                document_tokens=done.record.document_tokens,
                cache_tokens=done.record.cache_tokens,
            )
        outcome = dataclasses.replace(outcome, seconds=time.perf_counter() - began)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(exc).__name__


# ----------------------------------------------------------------------------- across documents


def kept_text(record: CacheRecord, tokenizer: object) -> str:
    """The text a cache kept (its token ids decoded), read without loading its keys and values."""
    from safetensors import safe_open

    from homer.store import TENSOR_FILE

    with safe_open(str(record.path / TENSOR_FILE), framework="pt") as tensors:
        ids = tensors.get_tensor("token_ids").tolist()
    return str(tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Choice:
    """Caches picked for a question, most relevant first, with every cache's BM25 score."""

    names: list[str]
    scores: dict[str, float]


def choose_caches(
    store: Store,
    question: str,
    model: LoadedModel,
    *,
    limit: int | None = None,
    room: int | None = None,
) -> Choice:
    """The saved caches of `model` most relevant to `question`, as many as fit the window.

    Caches are ranked by BM25 between the question and each cache's kept text
    (`homer.routing`); then taken in that order while their lengths fit the model's window
    with `room` tokens to spare (and at most `limit` of them). Caches built by another model
    are not considered.

    Raises:
        CacheError: no cache of this model is saved.
    """
    from homer.adapter import ModelAdapter
    from homer.joining import question_room
    from homer.routing import bm25_scores

    records = [
        r
        for r in store.records()
        if r.meta.get("model", {}).get("fingerprint") == model.fingerprint
    ]
    if not records:
        raise CacheError("no saved cache was built with this model; ingest documents first")
    texts = [kept_text(record, model.tokenizer) for record in records]
    scores = bm25_scores(question, texts)
    order = sorted(range(len(records)), key=lambda i: -scores[i])
    window = ModelAdapter(model.model).window
    room = question_room(window) if room is None else room
    chosen: list[str] = []
    used = 0
    for i in order:
        if limit is not None and len(chosen) >= limit:
            break
        length = records[i].cache_tokens
        if chosen and used + length + room > window:
            continue
        chosen.append(records[i].name)
        used += length
    return Choice(names=chosen, scores={r.name: s for r, s in zip(records, scores, strict=True)})


@dataclass(frozen=True)
class Joined:
    """Caches opened and joined for one question.

    Attributes:
        cache: the joined cache (its spans point into `document.text` when it can cite).
        records: each cache's record, in the order joined.
        document: their saved texts as one view whose citations name each document, or None
            when any of them cannot cite (saved before format 2).
    """

    cache: HomerCache
    records: list[CacheRecord]
    document: DocumentView | None


def open_joined(
    model: LoadedModel,
    names: Sequence[str],
    *,
    store: Store | None = None,
    room: int | None = None,
    search: Sequence[str] | None = None,
) -> Joined:
    """Load caches `names` for `model` and join them, in that order, into one cache, leaving
    `room` tokens of the window free (default `homer.joining.question_room`). Re-reading and
    citations search the documents of caches `search` (default: all of them).

    Raises:
        CacheNotFoundError, CacheMismatchError, CacheError: as `homer.service.open_cache`.
        JoinTooLongError: together they do not fit the model's window with room for a question.
        ValueError: `search` names a cache that is not among `names`.
    """
    from homer.grounding import DocumentView
    from homer.joining import join_caches
    from homer.service import open_cache
    from homer.store import Store

    store = store or Store()
    unknown = [n for n in search or () if n not in names]
    if unknown:
        raise ValueError(f"search names caches not joined: {', '.join(unknown)}")
    opened = [open_cache(model, name, store=store) for name in dict.fromkeys(names)]
    views = [o.document for o in opened]
    document = None
    if all(view is not None for view in views):
        named = [o.name for o in opened]
        document = DocumentView.joined(
            [
                dataclasses.replace(view, name=o.name)
                for view, o in zip(views, opened, strict=True)
                if view is not None
            ],
            None if search is None else [named.index(n) for n in search],
        )
    offsets = None if document is None else document.offsets
    joined = join_caches(model.model, [o.cache for o in opened], room, offsets)
    if len(opened) == 1:
        document = views[0]  # one document: cited as `ask` on it alone cites it
    return Joined(joined, [o.record for o in opened], document)
