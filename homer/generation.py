"""Answering from a `HomerCache`: feed a question after the cache, then decode, streaming.

The question's tokens continue at positions `last_position + 1, ...`, on a fresh copy of the
cache, so the stored cache is never mutated (ALGORITHM.md §8). Decoding is greedy at temperature
0, else sampled (temperature, nucleus `top_p`, optional seed). Text is yielded as it becomes
printable: bytes of a character split across tokens are held back until complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from homer.adapter import ModelAdapter, cache_kwargs
from homer.cache import HomerCache
from homer.prompts import PromptTemplate, encode


@dataclass
class GenerationStats:
    """Counts and timings of one answer (seconds, wall clock)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0


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


class GenerationStream:
    """An iterator of text pieces; `stats` and `text` are complete once it is exhausted."""

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
    ) -> None:
        if not question.strip():
            raise ValueError("the question is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if raw:
            self.prompt_ids = encode(tokenizer, question)
        else:
            template = PromptTemplate.for_tokenizer(tokenizer)
            self.prompt_ids = encode(tokenizer, template.continuation(question))
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids))
        self.token_ids: list[int] = []
        self.text = ""

    def _forward(self, ids: list[int], start: int, past: Any) -> torch.Tensor:
        device = next(self.model.parameters()).device
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
        adapter = ModelAdapter(self.model)
        cache = self.cache
        if cache.device != adapter.device or cache.dtype != adapter.dtype:
            cache = cache.to(adapter.device, adapter.dtype)
        past = cache.to_dynamic_cache()
        position = cache.last_position + 1
        logits = self._forward(self.prompt_ids, position, past)
        position += len(self.prompt_ids)
        stop = _stop_ids(self.model, self.tokenizer)
        emitted = 0
        for step in range(self.max_new_tokens):
            token = sample_next(logits, self.temperature, self.top_p, self.generator)
            if step == 0:
                self.stats.time_to_first_token_s = time.perf_counter() - began
            if token in stop:
                break
            self.token_ids.append(token)
            self.stats.new_tokens += 1
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > emitted:
                yield text[emitted:]
                emitted = len(text)
            self.text = text
            if step + 1 < self.max_new_tokens:
                logits = self._forward([token], position, past)
                position += 1
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if len(self.text) > emitted:
            yield self.text[emitted:]
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
) -> GenerationStream:
    """Answer `question` from `cache`; iterate the result for text pieces as they are generated.

    With `raw=True`, `question` is fed verbatim after the cache instead of being wrapped in the
    model's question template (for task-specific prompts, e.g. "... The pass key is").
    The cache is copied, never changed: answering twice gives the same greedy answer.
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
    )
