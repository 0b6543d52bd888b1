"""`HomerCache`: the fixed-length kv-cache HOMER produces, and what a later prompt needs from it.

It holds tensors and plain metadata only; saving and loading live in `homer.store`, generation in
`homer.generation`. A `HomerCache` is never mutated by answering: `to_dynamic_cache` hands out a
fresh copy each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class CacheInfo:
    """Plain, JSON-serialisable facts about how a cache was built.

    Attributes:
        prefix_text / suffix_text: the instruction text placed around the document (never pruned).
        focus: the question put in the suffix (query-aware mode), or None (query-agnostic).
        document_tokens: `C`, tokens of the document alone.
        prefix_tokens / suffix_tokens: `P` and `S`.
        num_chunks / height: leaves of the merge tree and its height (0 for one chunk).
        settings: the resolved `HomerConfig` (`ResolvedConfig.to_dict()`).
        model_type: `config.model_type` of the model that built it.
    """

    prefix_text: str
    suffix_text: str
    focus: str | None
    document_tokens: int
    prefix_tokens: int
    suffix_tokens: int
    num_chunks: int
    height: int
    settings: dict[str, Any] = field(default_factory=dict)
    model_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix_text": self.prefix_text,
            "suffix_text": self.suffix_text,
            "focus": self.focus,
            "document_tokens": self.document_tokens,
            "prefix_tokens": self.prefix_tokens,
            "suffix_tokens": self.suffix_tokens,
            "num_chunks": self.num_chunks,
            "height": self.height,
            "settings": dict(self.settings),
            "model_type": self.model_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheInfo:
        return cls(
            prefix_text=str(data["prefix_text"]),
            suffix_text=str(data["suffix_text"]),
            focus=data.get("focus"),
            document_tokens=int(data["document_tokens"]),
            prefix_tokens=int(data["prefix_tokens"]),
            suffix_tokens=int(data["suffix_tokens"]),
            num_chunks=int(data["num_chunks"]),
            height=int(data["height"]),
            settings=dict(data.get("settings", {})),
            model_type=str(data.get("model_type", "")),
        )


@dataclass
class HomerCache:
    """A kv-cache of equal length `T` in every layer, ready to be continued.

    Attributes:
        keys / values: one tensor per decoder layer, each `(1, kv_heads, T, head_dim)`, post-RoPE
            keys as the model caches them.
        token_ids: `(T,)` int64, the kept tokens in cache order.
        positions: `(T,)` int64, their position ids; `positions[-1]` is `last_position`.
        last_logits: `(vocab,)` float32, the model's logits at the last cached token.
        info: how the cache was built.
        spans: `(T, 2)` int64 `[start, end)` character span of each kept token in the document
            text, `(-1, -1)` for the instruction around it (`homer.provenance`); None when
            unknown (a cache saved before spans were kept, a joined cache, a tokenizer without
            offsets): such a cache answers but cannot cite.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    token_ids: torch.Tensor
    positions: torch.Tensor
    last_logits: torch.Tensor
    info: CacheInfo
    spans: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError("a HomerCache needs one key and one value tensor per layer")
        length = int(self.token_ids.shape[0])
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.shape[-2] != length or v.shape[-2] != length:
                raise ValueError(
                    f"layer {i} holds {k.shape[-2]} keys / {v.shape[-2]} values, "
                    f"expected {length} (the number of token ids)"
                )
        if self.positions.shape != self.token_ids.shape:
            raise ValueError("positions and token_ids must have the same shape")
        if self.spans is not None and tuple(self.spans.shape) != (length, 2):
            raise ValueError(f"spans must be ({length}, 2), got {tuple(self.spans.shape)}")

    @property
    def length(self) -> int:
        """Tokens per layer (the same in every layer)."""
        return int(self.token_ids.shape[0])

    @property
    def last_position(self) -> int:
        """Position id of the last cached token; continue at `last_position + 1`."""
        return int(self.positions[-1])

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def to_dynamic_cache(self) -> DynamicCache:
        """A fresh transformers `DynamicCache` holding copies of the keys and values."""
        return DynamicCache(
            ddp_cache_data=[
                (k.clone(), v.clone()) for k, v in zip(self.keys, self.values, strict=True)
            ]
        )

    def placed(self, devices: list[torch.device], dtype: torch.dtype | None = None) -> HomerCache:
        """The cache with layer `i`'s keys and values on `devices[i]` (where a model spread over
        several devices runs that layer) and in `dtype`; itself where that is already so."""
        if len(devices) != self.num_layers:
            raise ValueError(f"{len(devices)} devices for a cache of {self.num_layers} layers")
        if all(
            k.device == d and v.device == d and (dtype is None or k.dtype == dtype == v.dtype)
            for k, v, d in zip(self.keys, self.values, devices, strict=True)
        ):
            return self
        from homer.transfer import move_all

        moved = move_all([*self.keys, *self.values], [*devices, *devices], dtype)
        return HomerCache(
            keys=moved[: self.num_layers],
            values=moved[self.num_layers :],
            token_ids=self.token_ids,
            positions=self.positions,
            last_logits=self.last_logits,
            info=self.info,
            spans=self.spans,
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HomerCache:
        """A copy on `device` and/or with keys and values in `dtype` (host-to-GPU copies through
        pinned memory, `homer.transfer`)."""
        from homer.transfer import move_all

        tensors = [*self.keys, *self.values]
        target = [t.device if device is None else torch.device(device) for t in tensors]
        moved = move_all(tensors, target, dtype)
        return HomerCache(
            keys=moved[: self.num_layers],
            values=moved[self.num_layers :],
            token_ids=self.token_ids.to(device=device),
            positions=self.positions.to(device=device),
            last_logits=self.last_logits.to(device=device),
            info=self.info,
            spans=self.spans,
        )
