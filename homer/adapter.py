"""The one module that touches transformers internals: driving a decoder's layers chunk by chunk.

`ModelAdapter` finds a causal LM's embedding, rotary embedding, decoder layers, final norm and
head, and runs any range of layers on a chunk with arbitrary (gappy, repeated) position ids. It
captures what HOMER needs through a registered attention function (transformers'
`AttentionInterface`), which sees exactly the post-RoPE queries, keys and values the model
computes, whatever its architecture does before (q/k norms, scaling): the keys and values of
every layer it runs, and the last token's query at chosen layers. It knows nothing of trees,
pruning or prompts.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from homer.errors import UnsupportedModelError

#: `config.model_type` values homer drives. Each is a RoPE decoder whose decoder layers take
#: `position_embeddings` and whose attention goes through `AttentionInterface`.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_ATTENTION_NAME = "homer_capture"


#: Model class -> the keyword its `forward` takes the kv-cache under (see `cache_kwargs`).
_CACHE_KEYWORD: dict[type, str] = {}


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """`cache` as the keyword `model.forward` takes it: `cache=` in transformers releases that
    renamed it (5.2x; the old name warns on every call and goes in 5.40), `past_key_values=`
    before."""
    cls = type(model)
    if cls not in _CACHE_KEYWORD:  # read once per class: this runs on every decoded token
        parameters = inspect.signature(cls.forward).parameters
        _CACHE_KEYWORD[cls] = "cache" if "cache" in parameters else "past_key_values"
    return {_CACHE_KEYWORD[cls]: cache}


def output_cache(output: Any) -> Any:
    """The kv-cache a model call returned, under either of its names (see `cache_kwargs`)."""
    if "cache" in output:  # not `.get(..., output.past_key_values)`: the old name warns
        return output["cache"]
    return output.past_key_values


@dataclass
class _Capture:
    """What the capturing attention function records during one `run_layers` call."""

    base: Callable[..., Any]
    query_layers: frozenset[int]
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "homer_capture", default=None
)


def _capturing_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Records keys, values and (where asked) the last query row, then runs the real attention.

    `query` is `(B, H, T, D)`; `key` and `value` are `(B, KV, T, D)`, post-RoPE, before any
    grouped-query repetition: exactly what a kv-cache holds.
    """
    capture = _ACTIVE.get()
    if capture is None:
        raise RuntimeError("homer's capturing attention ran outside ModelAdapter.run_layers")
    idx = int(module.layer_idx)  # type: ignore[arg-type]
    capture.keys[idx] = key
    capture.values[idx] = value
    if idx in capture.query_layers:
        capture.queries[idx] = query[0, :, -1, :]
        capture.scaling[idx] = float(kwargs.get("scaling") or module.scaling)  # type: ignore[arg-type]
    return capture.base(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]


AttentionInterface.register(_ATTENTION_NAME, _capturing_attention)


@dataclass
class LayerRun:
    """The result of running a range of layers on one chunk.

    Attributes:
        hidden: `(1, T, hidden)` output of the last layer run.
        keys / values: one `(1, KV, T, D)` tensor per layer run, in order.
        queries: layer index -> `(H, D)` post-RoPE query of the last token, for the layers asked.
        scaling: layer index -> that layer's softmax scale.
    """

    hidden: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    queries: dict[int, torch.Tensor]
    scaling: dict[int, float]


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


class ModelAdapter:
    """Layer-by-layer access to a supported causal LM.

    Raises:
        UnsupportedModelError: the architecture is not one homer can drive.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = _text_config(model.config)
        model_type = str(getattr(self.config, "model_type", "unknown"))
        if model_type not in SUPPORTED_MODEL_TYPES:
            architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
            raise UnsupportedModelError(
                f"homer cannot drive the '{model_type}' architecture ({', '.join(architectures)}); "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(self.config, "sliding_window", None) and getattr(
            self.config, "use_sliding_window", True
        ):
            window = int(self.config.sliding_window)
            if window < int(self.config.max_position_embeddings):
                raise UnsupportedModelError(
                    f"'{model_type}' with sliding-window attention ({window} tokens) is not "
                    "supported: HOMER's merged chunks reuse positions, which a sliding window "
                    "cannot express"
                )
        self.model_type = model_type
        # Modules of the concrete model class; typed loosely because transformers' own are.
        source: Any = model
        base: Any = source.get_decoder() if hasattr(source, "get_decoder") else source.model
        self.embed_tokens: Any = base.embed_tokens
        self.rotary_emb: Any = base.rotary_emb
        self.layers: Any = base.layers
        self.norm: Any = base.norm
        self.lm_head: Any = source.get_output_embeddings()
        self.attn_implementation = str(self.config._attn_implementation or "eager")

    # -- facts --------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def window(self) -> int:
        """The native context window in tokens."""
        return int(self.config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # -- steps --------------------------------------------------------------------------------

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`(T,)` ids -> `(1, T, hidden)` input embeddings (scaled where the model scales them)."""
        return self.embed_tokens(token_ids.to(self.device).unsqueeze(0))  # type: ignore[no-any-return]

    def rotary(
        self, hidden: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)` for `(T,)` position ids, shared by all layers of a stage."""
        cos, sin = self.rotary_emb(hidden, positions.to(hidden.device).unsqueeze(0))
        return cos, sin

    def turning(self, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each `(1, T, head_dim)` float32, of the angles that move a cached key
        by `shifts[t]` positions (see `homer.positions.turn_keys`).

        The rotary module's attention scaling (YaRN's temperature) is divided out: the cached
        keys already carry it once.
        """
        probe = torch.zeros(1, shifts.shape[0], 1, device=self.device, dtype=torch.float32)
        cos, sin = self.rotary_emb(probe, shifts.to(self.device).unsqueeze(0))
        scale = float(getattr(self.rotary_emb, "attention_scaling", 1.0) or 1.0)
        return cos.float() / scale, sin.float() / scale

    def attention_mask(
        self, hidden: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The mask for one chunk of `(1, T, hidden)` states, or None where causal is implicit.

        Without `positions` (or with increasing ones) it is the plain causal mask: SDPA and flash
        attention apply it on their own when queries and keys have the same length, as they do
        here (each stage runs on a fresh chunk with no cache), so they get None; eager attention
        adds whatever it gets, so it gets an explicit one. With `positions` that repeat (merged
        siblings), a token may also not attend to a token at a *larger position id*, even one
        earlier in the sequence: no query then sees a key from its future (see DESIGN.md).
        """
        length = hidden.shape[1]
        device = hidden.device
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        monotonic = positions is None or bool((positions[1:] >= positions[:-1]).all())
        if monotonic and self.attn_implementation != "eager":
            return None
        if not monotonic:
            assert positions is not None
            pos = positions.to(device)
            allowed &= pos[None, :] <= pos[:, None]
        if self.attn_implementation == "eager":
            mask = torch.zeros(length, length, dtype=hidden.dtype, device=device)
            return mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[None, None]
        return allowed[None, None]

    def _base_attention(self) -> Callable[..., Any]:
        if self.attn_implementation == "eager":
            module = sys.modules[type(self.layers[0].self_attn).__module__]
            return module.eager_attention_forward  # type: ignore[no-any-return]
        return ALL_ATTENTION_FUNCTIONS[self.attn_implementation]  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _capturing(self, capture: _Capture) -> Iterator[None]:
        """Route attention through `_capturing_attention` for the duration, then restore."""
        token = _ACTIVE.set(capture)
        previous = self.config._attn_implementation
        self.config._attn_implementation = _ATTENTION_NAME
        try:
            yield
        finally:
            self.config._attn_implementation = previous
            _ACTIVE.reset(token)

    @torch.inference_mode()
    def run_layers(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        layers: range,
        query_layers: frozenset[int] = frozenset(),
        mask: torch.Tensor | None = None,
    ) -> LayerRun:
        """Run decoder layers `layers` on one chunk, causally over its own tokens only.

        Args:
            hidden: `(1, T, hidden)` input of the first layer in `layers`.
            position_embeddings: from `rotary` for this chunk's positions.
            layers: consecutive layer indices.
            query_layers: layers whose last-token query to record.
            mask: from `attention_mask`; None means plain causal attention.
        """
        capture = _Capture(base=self._base_attention(), query_layers=query_layers)
        if mask is None:
            mask = self.attention_mask(hidden)
        with self._capturing(capture):
            for idx in layers:
                out = self.layers[idx](
                    hidden,
                    attention_mask=mask,
                    position_embeddings=position_embeddings,
                    use_cache=False,
                )
                hidden = out[0] if isinstance(out, tuple) else out
        return LayerRun(
            hidden=hidden,
            keys=[capture.keys[i] for i in layers],
            values=[capture.values[i] for i in layers],
            queries=capture.queries,
            scaling=capture.scaling,
        )

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(..., hidden)` last-layer output -> `(..., vocab)` float32 logits (norm, then head)."""
        normed = self.norm(hidden)
        return self.lm_head(normed.to(self.lm_head.weight.device)).float()  # type: ignore[no-any-return]
