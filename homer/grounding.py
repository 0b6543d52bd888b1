"""Grounded answers: cite the passages an answer rests on, re-read them, say when it is not there.

The cache is the map of the whole document; the question's attention over it
(`ModelAdapter.attention_after`, read by `homer.evidence`) points at the few passages that
matter. With `Grounding.reread`, their original text (from the text saved with the cache, a
budget of tokens in all) is fed after the cache, before the question, at the positions after
`last_position`: the model answers from the map plus the pages. With `Grounding.cite`, the
question and the finished answer are fed once more to rank the passages the answer rests on.
When no passage stands clearly above the rest (`homer.evidence.strength` under
`Grounding.threshold`), the answer is flagged as not grounded in the document.

The saved cache is never changed: every pass runs on a fresh copy.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from homer.adapter import ModelAdapter
from homer.cache import HomerCache
from homer.documents import line_starts, locate
from homer.evidence import (
    PASSAGE_CHARS,
    Passage,
    passage_scores,
    split_passages,
    strength,
    token_evidence,
    top_passages,
    within_budget,
)
from homer.generation import GenerationStats, GenerationStream
from homer.prompts import PromptTemplate, Turn, encode

#: Strength (`homer.evidence.strength` of the lexical ranking) under which an answer is called
#: not grounded: midway between the needle questions (3.5-4.1) and the questions of absent facts
#: (2.3-2.8) of a development set (mixed haystack, 16k, seed 1), measured on other needles in
#: docs/RESULTS.md, "Grounded answers".
GROUNDED_THRESHOLD = 3.1
#: Default budget of re-read text, in tokens.
REREAD_TOKENS = 1024
#: Whether questions re-read by default (`homer ask`, the server); a summary does not.
REREAD_DEFAULT = True


@dataclass(frozen=True)
class Grounding:
    """How an answer reaches past the cache to the document's own text.

    Attributes:
        cite: passages to cite after the answer (0: none).
        reread: re-read the passages the question points at before answering.
        reread_tokens: budget of re-read text, in tokens (cut to what the window leaves).
        check: judge whether the answer is grounded (one extra short pass when nothing else
            needs it).
        threshold: strength under which the answer is called not grounded.
        passage_chars: about how long a passage is, in characters.
        method: how passages are ranked (`RANKINGS`): the model's attention over the cache,
            the question's words (BM25 over the passages' text), or both fused.
    """

    cite: int = 0
    reread: bool = False
    reread_tokens: int = REREAD_TOKENS
    check: bool = True
    threshold: float = GROUNDED_THRESHOLD
    passage_chars: int = PASSAGE_CHARS
    method: str = "fused"

    def __post_init__(self) -> None:
        if self.method not in RANKINGS:
            raise ValueError(f"method must be one of {', '.join(RANKINGS)}, got {self.method!r}")
        if self.cite < 0:
            raise ValueError(f"cite must be >= 0, got {self.cite}")
        if self.reread_tokens < 1:
            raise ValueError(f"reread_tokens must be >= 1, got {self.reread_tokens}")
        if self.passage_chars < 20:
            raise ValueError(f"passage_chars must be >= 20, got {self.passage_chars}")

    @property
    def active(self) -> bool:
        return bool(self.cite or self.reread or self.check)


@dataclass(frozen=True)
class Citation:
    """A passage an answer rests on.

    Attributes:
        start / end: `[start, end)` characters in its document.
        score: its share of the attention (passages' scores sum to one).
        text: the passage's text.
        page: the PDF page it starts on, or None for text.
        lines: first and last line (1-based) it spans in its document's text.
        source: the name of its document's cache, in an answer across several; else None.
    """

    start: int
    end: int
    score: float
    text: str
    page: int | None
    lines: tuple[int, int]
    source: str | None = None

    @property
    def where(self) -> str:
        """`p. 12, lines 340-352`, `lines 340-352` for text, after `name, ` across documents."""
        first, last = self.lines
        lines = f"line {first}" if first == last else f"lines {first}-{last}"
        place = lines if self.page is None else f"p. {self.page}, {lines}"
        return place if self.source is None else f"{self.source}, {place}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Citation:
        first, last = data["lines"]
        return cls(
            start=int(data["start"]),
            end=int(data["end"]),
            score=float(data["score"]),
            text=str(data["text"]),
            page=None if data.get("page") is None else int(data["page"]),
            lines=(int(first), int(last)),
            source=None if data.get("document") is None else str(data["document"]),
        )

    def to_dict(self) -> dict[str, Any]:
        place = {} if self.source is None else {"document": self.source}
        return place | {
            "page": self.page,
            "lines": list(self.lines),
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 4),
            "text": self.text,
        }


#: What stands between two documents' texts in a joined view (a paragraph break).
JOIN_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class DocumentView:
    """The document's text as saved with a cache, and how to name a place in it.

    A view of several documents (`DocumentView.joined`, for caches asked together) holds their
    texts one after another in `text`; its passages never cross from one document to the next,
    and its citations name the document and count pages and lines within it. `searched` limits
    the passages ranked (re-read, cited) to some of its parts; the others still take part in
    the answer through their caches.
    """

    text: str
    page_map: tuple[int, ...] = ()
    name: str | None = None
    parts: tuple[DocumentView, ...] = ()
    searched: tuple[int, ...] = ()
    _lines: list[int] = field(default_factory=list, compare=False, repr=False)
    _offsets: list[int] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A joined view names places through its parts, each with its own line starts.
        object.__setattr__(self, "_lines", [] if self.parts else line_starts(self.text))
        offsets, at = [], 0
        for part in self.parts:
            offsets.append(at)
            at += len(part.text) + len(JOIN_SEPARATOR)
        object.__setattr__(self, "_offsets", offsets)

    @classmethod
    def joined(
        cls, parts: Sequence[DocumentView], searched: Sequence[int] | None = None
    ) -> DocumentView:
        """One view of `parts` in order (each named), their texts joined by `JOIN_SEPARATOR`;
        passages are taken from the parts indexed by `searched` (default: all)."""
        chosen = tuple(range(len(parts)) if searched is None else sorted(set(searched)))
        if not all(0 <= i < len(parts) for i in chosen):
            raise ValueError(f"searched parts {list(chosen)} outside 0..{len(parts) - 1}")
        text = JOIN_SEPARATOR.join(p.text for p in parts)
        return cls(text, parts=tuple(parts), searched=chosen)

    @property
    def offsets(self) -> list[int]:
        """Where each part's text starts in `text` (empty for a single document)."""
        return list(self._offsets)

    def passages(self, target: int = PASSAGE_CHARS) -> list[tuple[int, int]]:
        """`[start, end)` passages covering the text (`homer.evidence.split_passages`), split
        within each part of a joined view."""
        if not self.parts:
            return split_passages(self.text, target)
        return [
            (self._offsets[i] + a, self._offsets[i] + b)
            for i in self.searched
            for a, b in split_passages(self.parts[i].text, target)
        ]

    def citation(self, passage: Passage) -> Citation:
        if self.parts:
            i = max(0, bisect_right(self._offsets, passage.start) - 1)
            at = self._offsets[i]
            local = Passage(passage.start - at, passage.end - at, passage.score)
            return self.parts[i].citation(local)
        last = max(passage.start, passage.end - 1)
        return Citation(
            start=passage.start,
            end=passage.end,
            score=passage.score,
            text=self.text[passage.start : passage.end].strip(),
            page=locate(passage.start, self.page_map) if self.page_map else None,
            lines=(locate(passage.start, self._lines), locate(last, self._lines)),
            source=self.name,
        )


@dataclass(frozen=True)
class Evidence:
    """What the question's attention (and words) say: the passages best first, how clearly
    the best stands out, and whether that counts as grounded.

    Attributes:
        scores: per way of ranking (`"attention"`, `"lexical"`, `"fused"`), `(P,)` float32
            scores of the passages in document order.
        bounds: the passages' `[start, end)` characters.
    """

    passages: list[Passage]
    strength: float
    grounded: bool
    scores: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    bounds: list[tuple[int, int]] = field(default_factory=list, repr=False)
    baseline: torch.Tensor | None = field(default=None, repr=False)


#: What a question about nothing in particular asks: its attention is taken off a real
#: question's (`homer.evidence.lift`).
BASELINE_QUESTION = "What is this document about?"


def rank_passages(
    model: Any,
    tokenizer: Any,
    cache: HomerCache,
    document: DocumentView,
    fed_text: str,
    *,
    words: str,
    baseline_text: str,
    passage_chars: int = PASSAGE_CHARS,
    threshold: float = GROUNDED_THRESHOLD,
    method: str = "fused",
    baseline: torch.Tensor | None = None,
) -> Evidence:
    """Rank the document's passages for a question.

    Args:
        fed_text: what is fed after the cache (the question in its template, and for a
            citation the answer after it): its attention over the kept tokens of each passage,
            less that of `baseline_text` (the same template around `BASELINE_QUESTION`).
        words: the text whose words rank the passages lexically (BM25 over their full text).
        method: which ranking orders `passages`: `"attention"`, `"lexical"` or `"fused"`.
        baseline: the `(T,)` evidence of `baseline_text` from an earlier call on the same cache
            (`Evidence.baseline`), so it is not computed again.

    Raises:
        ValueError: the cache has no spans (it cannot cite), or an unknown method.
    """
    from homer.evidence import fuse, lift
    from homer.routing import bm25_scores

    if cache.spans is None:
        raise ValueError("this cache keeps no spans, so it cannot cite")
    if method not in RANKINGS:
        raise ValueError(f"method must be one of {', '.join(RANKINGS)}, got {method!r}")
    adapter = ModelAdapter(model)
    placed = cache.placed(adapter.layer_devices(), adapter.dtype)
    spans = cache.spans.clamp(max=len(document.text))
    in_document = spans[:, 0] >= 0
    start = cache.last_position + 1

    def evidence_of(text: str) -> torch.Tensor:
        ids = encode(tokenizer, text)
        # Checked before the model runs: a question far past the window (a hostile request)
        # would otherwise ask for a causal mask of its length squared.
        if start + len(ids) + 1 > adapter.window:
            from homer.generation import ContextOverflowError

            raise ContextOverflowError(start + len(ids) + 1, adapter.window)
        attentions = adapter.attention_after(placed.to_dynamic_cache(), ids, start)
        return token_evidence(attentions, in_document)

    bounds = document.passages(passage_chars)
    if baseline is None:
        baseline = evidence_of(baseline_text)
    attention = passage_scores(lift(evidence_of(fed_text), baseline), spans, bounds)
    lexical = torch.tensor(
        bm25_scores(words, [document.text[a:b] for a, b in bounds]), dtype=torch.float32
    )
    scores = {"attention": attention, "lexical": lexical, "fused": fuse(attention, lexical)}
    chosen = scores[method]
    power = strength(lexical if method != "attention" else attention)
    return Evidence(
        passages=top_passages(chosen, bounds, len(bounds)),
        strength=power,
        grounded=power >= threshold,
        scores=scores,
        bounds=bounds,
        baseline=baseline,
    )


#: The ways `rank_passages` can order passages.
RANKINGS = ("fused", "attention", "lexical")


REREAD_HEAD = "\n\nPassages of the document, re-read in full:\n"
#: Fewest tokens of a passage worth re-reading when none fits whole.
_MIN_PIECE = 16


def reread_text(
    tokenizer: Any, document: DocumentView, passages: Sequence[Passage], budget: int
) -> str:
    """The best `passages` that fit `budget` tokens, in document order, labelled with where
    they are, as text to feed before the question ('' when none fits)."""
    pieces = [document.text[p.start : p.end].strip() for p in passages]
    labels = [document.citation(p).where for p in passages]
    blocks = [f"\n[{label}] {piece}\n" for label, piece in zip(labels, pieces, strict=True)]
    lengths = [len(encode(tokenizer, block)) for block in blocks]
    head = len(encode(tokenizer, REREAD_HEAD))
    chosen = within_budget(passages, lengths, budget - head)
    if not chosen:
        # Not even the best passage fits whole (a small window): its opening, as much as fits.
        if not passages:
            return ""
        room = budget - head - len(encode(tokenizer, f"\n[{labels[0]}] \n"))
        if room < _MIN_PIECE:
            return ""
        ids = encode(tokenizer, pieces[0])[:room]
        return REREAD_HEAD + f"\n[{labels[0]}] {tokenizer.decode(ids)}\n"
    by_start = {p.start: block for p, block in zip(passages, blocks, strict=True)}
    return REREAD_HEAD + "".join(by_start[p.start] for p in chosen)


class GroundedStream:
    """An answer with its grounding: iterate for text; once exhausted, `evidence` (the
    question's), `citations` and `grounded` are set, and `stats` and `text` as for a
    `GenerationStream`.

    Args:
        document: the text saved with the cache, or None for a cache that cannot cite (then
            the answer is plain and `unavailable` says why).
        generation: keyword arguments for `GenerationStream` (sampling, stop strings).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        cache: HomerCache,
        question: str,
        grounding: Grounding,
        document: DocumentView | None,
        *,
        history: Sequence[Turn] = (),
        generation: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.question = question
        self.grounding = grounding
        self.history = tuple(history)
        self.evidence: Evidence | None = None
        self.citations: list[Citation] = []
        self.reread: str = ""
        self.grounding_seconds = 0.0
        self.unavailable: str | None = None
        if document is None or cache.spans is None:
            self.unavailable = "the cache keeps no sources (saved before homer could cite)"
            document = None
        self.document = document
        template = PromptTemplate.for_tokenizer(tokenizer)
        self._fed = template.conversation(self.history, question)
        self._baseline = template.conversation(self.history, BASELINE_QUESTION)
        self._cancelled = threading.Event()
        self._options = dict(generation or {})
        # Built now so a prompt too long for the window is refused before anything runs; the
        # passes over the model happen when the answer is iterated (behind a spinner).
        self._stream = GenerationStream(
            model, tokenizer, cache, question, history=self.history, **self._options
        )

    def _ground(self) -> None:
        """Rank the passages for the question and, when re-reading, build the answer's stream
        again with them fed first."""
        grounding, document = self.grounding, self.document
        if document is None or not (grounding.reread or grounding.check):
            return
        began = time.perf_counter()
        self.evidence = rank_passages(
            self.model,
            self.tokenizer,
            self.cache,
            document,
            self._fed,
            words=self.question,
            baseline_text=self._baseline,
            passage_chars=grounding.passage_chars,
            threshold=grounding.threshold,
            method=grounding.method,
        )
        if grounding.reread:
            self.reread = self._reread_text()
            if self.reread:
                self._stream = GenerationStream(
                    self.model,
                    self.tokenizer,
                    self.cache,
                    self.question,
                    history=self.history,
                    evidence=self.reread,
                    **self._options,
                )
        self.grounding_seconds += time.perf_counter() - began

    def _reread_text(self) -> str:
        assert self.evidence is not None and self.document is not None
        plain = self._stream  # the question without passages: its prompt is `self._fed`
        used = self.cache.last_position + 1 + len(plain.prompt_ids)
        room = plain.adapter.window - used - plain.max_new_tokens  # the answer's room
        budget = min(self.grounding.reread_tokens, room)
        if budget <= 0:
            return ""
        return reread_text(self.tokenizer, self.document, self.evidence.passages[:32], budget)

    @property
    def stats(self) -> GenerationStats:
        return self._stream.stats

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def grounded(self) -> bool | None:
        """Whether the question's best passage stands out (None when not judged)."""
        return None if self.evidence is None else self.evidence.grounded

    def report(self) -> dict[str, Any]:
        """What the grounding found, as JSON-able fields: `grounded` and `evidence` (None when
        not judged), whether passages were `reread`, the `citations`, and
        `grounding_unavailable` when the cache cannot cite."""
        evidence = self.evidence
        fields: dict[str, Any] = {
            "grounded": None if evidence is None else evidence.grounded,
            "evidence": None if evidence is None else round(evidence.strength, 3),
            "reread": bool(self.reread),
            "citations": [c.to_dict() for c in self.citations],
        }
        if self.unavailable:
            fields["grounding_unavailable"] = self.unavailable
        return fields

    def cancel(self) -> None:
        """Stop the answer before its next token (thread-safe), the grounding before it runs."""
        self._cancelled.set()
        self._stream.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[str]:
        if not self.cancelled:
            self._ground()
        if self.cancelled:  # also when cancelled while grounding: the new stream must stop
            self._stream.cancel()
        yield from self._stream
        if self.document is None or not self.grounding.cite or self.cancelled:
            return
        began = time.perf_counter()
        with torch.inference_mode():
            cited = rank_passages(
                self.model,
                self.tokenizer,
                self.cache,
                self.document,
                self._fed + self._stream.text,
                words=f"{self.question} {self._stream.text}",
                baseline_text=self._baseline,
                passage_chars=self.grounding.passage_chars,
                threshold=self.grounding.threshold,
                method=self.grounding.method,
                baseline=None if self.evidence is None else self.evidence.baseline,
            )
        self.citations = [self.document.citation(p) for p in cited.passages[: self.grounding.cite]]
        self.grounding_seconds += time.perf_counter() - began
