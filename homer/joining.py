"""Several caches as one: ask a question across documents.

Every cache HOMER builds is an ordinary kv-cache at consecutive positions `0 .. T-1`. Caches of
the same model can therefore be read one after another: each cache's keys are turned to the
positions after the previous cache's last (the exact rotation that gives a finished cache its
compact positions, `homer.positions.turn_keys`), values carry no position and stay as they are.
The question then continues after the last cache. Each document's tokens were computed
attending only to their own document, as if the documents had been read in separate sittings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from homer.adapter import ModelAdapter
from homer.cache import CacheInfo, HomerCache
from homer.errors import HomerError
from homer.positions import turn_keys


class JoinTooLongError(HomerError):
    """The caches together leave no room for a question in the model's window.

    Attributes:
        lengths: tokens of each cache.
        window: the model's window.
        room: tokens a question needs after the caches.
    """

    def __init__(self, lengths: Sequence[int], window: int, room: int) -> None:
        total = sum(lengths)
        per_cache = (window - room) // max(len(lengths), 1)
        smaller = f", or ingest them with a budget of at most {per_cache} tokens each"
        super().__init__(
            f"{len(lengths)} caches of {', '.join(map(str, lengths))} tokens ({total} in all) "
            f"leave no room for a question ({room} tokens) in the model's {window}-token "
            f"window; ask fewer documents at once{smaller if per_cache >= 64 else ''}"
        )
        self.lengths = list(lengths)
        self.window = window
        self.room = room


#: Tokens left free after joined caches for the question and its answer (a quarter of the
#: window for models with a window under 1,024 tokens).
QUESTION_ROOM = 256


def question_room(window: int) -> int:
    """Tokens to keep free after joined caches in a `window`-token model."""
    return min(QUESTION_ROOM, window // 4)


def join_caches(
    model: torch.nn.Module,
    caches: Sequence[HomerCache],
    room: int | None = None,
    text_offsets: Sequence[int] | None = None,
) -> HomerCache:
    """One cache holding `caches` in order, at consecutive positions.

    Args:
        model: the model every cache was built with (its rotary embedding turns the keys).
        caches: caches on the model's device and dtype, each at compact positions.
        room: tokens that must stay free in the window after them (default: `question_room`).
        text_offsets: where each cache's document starts in the documents' texts joined
            (`homer.grounding.DocumentView.joined`): the joined cache's spans point into that
            text. Without them, or when a cache keeps no spans, the joined cache keeps none.

    Raises:
        ValueError: no caches, or caches of different shapes (another model).
        JoinTooLongError: together they leave less than `room` tokens of the window.
    """
    if not caches:
        raise ValueError("join_caches needs at least one cache")
    if len(caches) == 1:
        return caches[0]
    adapter = ModelAdapter(model)
    room = question_room(adapter.window) if room is None else room
    lengths = [cache.length for cache in caches]
    if sum(lengths) + room > adapter.window:
        raise JoinTooLongError(lengths, adapter.window, room)
    shapes = {tuple(k.shape[:2] + k.shape[3:]) for cache in caches for k in cache.keys}
    if len(shapes) != 1 or len({cache.num_layers for cache in caches}) != 1:
        raise ValueError("caches built with different models cannot be joined")

    keys: list[list[torch.Tensor]] = [[] for _ in caches[0].keys]
    values: list[list[torch.Tensor]] = [[] for _ in caches[0].values]
    positions = []
    start = 0
    with torch.inference_mode():
        for cache in caches:
            shift = start - int(cache.positions[0])
            if shift:
                turnings = adapter.turnings(torch.full_like(cache.positions, shift))
            for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
                if shift:
                    cos, sin = turnings[i]
                    k = turn_keys(k, cos.to(k.device), sin.to(k.device))
                keys[i].append(k)
                values[i].append(v)
            positions.append(cache.positions + shift)
            start = int(positions[-1][-1]) + 1
    first, last = caches[0].info, caches[-1].info
    info = CacheInfo(
        prefix_text=first.prefix_text,
        suffix_text=last.suffix_text,
        focus=None,
        document_tokens=sum(cache.info.document_tokens for cache in caches),
        prefix_tokens=first.prefix_tokens,
        suffix_tokens=last.suffix_tokens,
        num_chunks=sum(cache.info.num_chunks for cache in caches),
        height=max(cache.info.height for cache in caches),
        settings={"joined": [cache.length for cache in caches]},
        model_type=first.model_type,
    )
    return HomerCache(
        keys=[torch.cat(parts, dim=2) for parts in keys],
        values=[torch.cat(parts, dim=2) for parts in values],
        token_ids=torch.cat([cache.token_ids for cache in caches]),
        positions=torch.cat(positions),
        last_logits=caches[-1].last_logits,
        info=info,
        spans=join_spans([cache.spans for cache in caches], text_offsets),
    )


def join_spans(
    spans: Sequence[torch.Tensor | None], offsets: Sequence[int] | None
) -> torch.Tensor | None:
    """Each cache's `(T_i, 2)` character spans moved by its document's offset in the joined
    text and concatenated (`(sum T_i, 2)`); spans of prompt tokens (`-1`) stay `-1`. None when
    `offsets` is None or any cache has no spans."""
    if offsets is None or any(s is None for s in spans):
        return None
    if len(offsets) != len(spans):
        raise ValueError(f"{len(offsets)} text offsets for {len(spans)} caches")
    moved = [
        torch.where(s >= 0, s + offset, s)
        for s, offset in zip(spans, offsets, strict=True)
        if s is not None
    ]
    return torch.cat(moved)
