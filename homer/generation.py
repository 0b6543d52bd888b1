"""Answering from a `HomerCache`: feed a question after the cache, then decode, streaming.

The question's tokens continue at positions `last_position + 1, ...`, on a fresh copy of the
cache, so the stored cache is never mutated (ALGORITHM.md §8). A follow-up question re-feeds the
earlier turns after the cache first (the cache stays as saved; the conversation is prompt text).
Decoding is greedy at temperature 0, else sampled (temperature, nucleus `top_p`, optional seed).
Text is yielded as it becomes printable: bytes of a character split across tokens are held back
until complete, and so is text that could be the start of a stop string.

Decoding stops at the end-of-sequence token or a stop string (`finish_reason="stop"`), at
`max_new_tokens` or the end of the model's window (`"length"`), when the answer starts to loop
(`"repetition"`: one clause said three times in a row, `homer.repetition`; `stop_loops=False`
decodes on), or when `cancel()` is called from any thread (`"cancelled"`). This module knows
nothing about the store, the CLI or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from homer.adapter import ModelAdapter, cache_kwargs
from homer.cache import HomerCache
from homer.errors import HomerError
from homer.prompts import PromptTemplate, Turn, encode
from homer.repetition import loop_start

FinishReason = Literal["stop", "length", "repetition", "cancelled", ""]


class ContextOverflowError(HomerError):
    """A prompt does not fit in the model's window after the cache.

    Attributes:
        needed: positions the cache and the prompt take, plus one for the first answer token.
        window: the model's context window in tokens.
    """

    def __init__(self, needed: int, window: int) -> None:
        super().__init__(
            f"the prompt does not fit the model's window: the cache and the prompt need "
            f"{needed} positions, the window holds {window}; shorten the conversation or "
            "the question"
        )
        self.needed = needed
        self.window = window


@dataclass
class GenerationStats:
    """Counts and timings of one answer (seconds, wall clock).

    Attributes:
        prompt_tokens: tokens fed after the cache (earlier turns and the question).
        new_tokens: tokens generated (a stop string's tokens included, the EOS token not).
        finish_reason: `"stop"` (end-of-sequence or a stop string), `"length"` (`max_new_tokens`
            or the model's window reached), `"repetition"` (the answer began to loop:
            `homer.repetition`), `"cancelled"`; `""` until the stream is exhausted.
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    finish_reason: FinishReason = ""


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Pick the next token from `(vocab,)` logits: greedy at temperature 0, else nucleus."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index in `text` where the earliest stop string begins (searching from `start`), or None."""
    found = [i for i in (text.find(stop, start) for stop in stops if stop) if i != -1]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class GenerationStream:
    """An iterator of text pieces; `stats` and `text` are complete once it is exhausted.

    `evidence` is text fed right after the cache, before the conversation (passages of the
    document re-read in full, `homer.grounding`).

    Raises (when built):
        ValueError: an empty question or an out-of-range option.
        ContextOverflowError: the cache and the prompt leave no room in the model's window.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        cache: HomerCache,
        question: str,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        raw: bool = False,
        history: Sequence[Turn] = (),
        stop: Sequence[str] = (),
        stop_loops: bool = True,
        evidence: str = "",
    ) -> None:
        if not question.strip():
            raise ValueError("the question is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if raw and (history or evidence):
            raise ValueError("history and evidence need the question template; raw=True takes none")
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.stop = tuple(s for s in stop if s)
        self.stop_loops = stop_loops
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.adapter = ModelAdapter(model)
        if raw:
            self.prompt_ids = encode(tokenizer, question)
        else:
            template = PromptTemplate.for_tokenizer(tokenizer)
            # Re-read passages (`homer.grounding`) come first, right after the cache.
            self.prompt_ids = encode(tokenizer, evidence + template.conversation(history, question))
        # Positions the cache and prompt take, and one more for the first answer token.
        needed = cache.last_position + 1 + len(self.prompt_ids) + 1
        if needed > self.adapter.window:
            raise ContextOverflowError(needed, self.adapter.window)
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids))
        self.token_ids: list[int] = []
        self.text = ""
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop decoding before the next token (thread-safe; the stream then ends normally)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _forward(self, ids: list[int], start: int, past: Any) -> torch.Tensor:
        device = self.adapter.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(self.model, past),
        )
        return out.logits[0, -1]  # type: ignore[no-any-return]

    @torch.inference_mode()
    def __iter__(self) -> Iterator[str]:
        began = time.perf_counter()
        if self.cancelled:
            self.stats.finish_reason = "cancelled"
            return
        adapter = self.adapter
        cache = self.cache
        # Each layer's keys where that layer runs (several devices for a model placed by
        # accelerate), in the model's dtype; no copy where they already are.
        cache = cache.placed(adapter.layer_devices(), adapter.dtype)
        past = cache.to_dynamic_cache()
        position = cache.last_position + 1
        logits = self._forward(self.prompt_ids, position, past)
        position += len(self.prompt_ids)
        # Every fed token needs a position inside the window; the last one is never fed.
        limit = min(self.max_new_tokens, adapter.window - position + 1)
        eos = _stop_ids(self.model, self.tokenizer)
        emitted = 0
        finish: FinishReason = "length"
        cut_at_stop = False
        text = ""
        for step in range(limit):
            if self.cancelled:
                finish = "cancelled"
                break
            token = sample_next(logits, self.temperature, self.top_p, self.generator)
            if step == 0:
                self.stats.time_to_first_token_s = time.perf_counter() - began
            if token in eos:
                finish = "stop"
                break
            self.token_ids.append(token)
            self.stats.new_tokens += 1
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if self.stop:
                cut = find_stop(text, self.stop, max(0, emitted - max(map(len, self.stop))))
                if cut is not None:
                    text = text[:cut]
                    finish = "stop"
                    cut_at_stop = True
                    break
            if not text.endswith("\ufffd"):
                safe = len(text) - held_back(text, self.stop) if self.stop else len(text)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            self.text = text
            if self.stop_loops and loop_start(self.token_ids) is not None:
                finish = "repetition"
                break
            if step + 1 < limit:
                logits = self._forward([token], position, past)
                position += 1
        if not cut_at_stop:  # the whole text, an incomplete character's bytes included
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        self.text = text
        if len(self.text) > emitted:
            yield self.text[emitted:]
        self.stats.finish_reason = finish
        self.stats.total_s = time.perf_counter() - began


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    cache: HomerCache,
    question: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    raw: bool = False,
    history: Sequence[Turn] = (),
    stop: Sequence[str] = (),
    stop_loops: bool = True,
) -> GenerationStream:
    """Answer `question` from `cache`; iterate the result for text pieces as they are generated.

    With `raw=True`, `question` is fed verbatim after the cache instead of being wrapped in the
    model's question template (for task-specific prompts, e.g. "... The pass key is").
    `history` holds the conversation's earlier turns, re-fed after the cache before `question`;
    decoding ends before the first of the `stop` strings (which is not returned).
    The cache is copied, never changed: answering twice gives the same greedy answer.

    Raises:
        ContextOverflowError: the cache and the prompt leave no room in the model's window.
    """
    return GenerationStream(
        model,
        tokenizer,
        cache,
        question,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        raw=raw,
        history=history,
        stop=stop,
        stop_loops=stop_loops,
    )
