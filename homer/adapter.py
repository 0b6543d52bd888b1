"""The one module that touches transformers internals: driving a decoder's layers chunk by chunk.

`ModelAdapter` finds a causal LM's embedding, rotary embedding, decoder layers, final norm and
head, and runs any range of layers on a chunk with arbitrary (gappy, repeated) position ids. It
captures what HOMER needs through a registered attention function (transformers'
`AttentionInterface`), which sees exactly the post-RoPE queries, keys and values the model
computes, whatever its architecture does before (q/k norms, scaling): the keys and values of
every layer it runs, and the last token's query at chosen layers. It knows nothing of trees,
pruning or prompts.

Hybrid models (Gemma 2/3, Mistral v0.1, Qwen2 with `use_sliding_window`) give each layer a type,
`"full_attention"` or `"sliding_attention"` (`config.layer_types`). Each type gets the mask
transformers' own `masking_utils` builds for it (a sliding layer attends to at most the
`sliding_window` previous tokens of the sequence it runs on) and, where the model has one rotary
embedding per type (Gemma 3), its own cos/sin. What the model does outside its layers and
modules is repeated here from its config: Granite's embedding multiplier and logit scaling,
Gemma's final logit soft-capping.
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
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from homer.errors import UnsupportedModelError

#: `config.model_type` values homer drives, each tested on a tiny model (tests/test_engine.py).
#: Each is a RoPE decoder whose decoder layers take `position_embeddings` and whose attention goes
#: through `AttentionInterface`, with Llama-style rotary pairs (partial rotary included).
SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "helium",
    "starcoder2",
)

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

#: Per layer type, `(cos, sin)` each `(1, T, rotary_dim)` (see `ModelAdapter.rotary`).
PositionEmbeddings = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: Per layer type, the mask its layers get, or None where causal attention is implicit.
AttentionMasks = dict[str, Any]

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


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: the execution device of the accelerate hook a `device_map` load
    or `dispatch_model` attached (its weights may even sit elsewhere, offloaded), else the device
    of its first weight."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    return next(module.parameters()).device


def _layer_types(config: Any, num_layers: int) -> tuple[str, ...]:
    """Each layer's attention type, as the model's own forward picks its mask: from
    `config.layer_types` where the config has them (Gemma 2/3, Qwen2/3), else every layer
    sliding when `config.sliding_window` is set (Mistral, Phi-3, Starcoder2) and full if not."""
    declared = getattr(config, "layer_types", None)
    if declared:
        return tuple(str(kind) for kind in declared[:num_layers])
    sliding = getattr(config, "sliding_window", None) is not None
    return (SLIDING_ATTENTION if sliding else FULL_ATTENTION,) * num_layers


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
        if getattr(self.config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                f"'{model_type}' with bidirectional attention is an encoder, not a causal LM"
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
        self.layer_types = _layer_types(self.config, len(self.layers))
        unknown = sorted(set(self.layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
        if unknown:
            raise UnsupportedModelError(
                f"'{model_type}' has layers of type {', '.join(unknown)}; homer drives only "
                f"{FULL_ATTENTION} and {SLIDING_ATTENTION} layers"
            )
        self._rotary_per_type = (
            "layer_type" in inspect.signature(self.rotary_emb.forward).parameters
        )
        # Done by the model's forward, not by a module homer calls (Granite, Gemma 2/3).
        self._embedding_multiplier = float(getattr(self.config, "embedding_multiplier", 1.0) or 1.0)
        self._logits_scaling = float(getattr(self.config, "logits_scaling", 1.0) or 1.0)
        self._final_softcap = getattr(self.config, "final_logit_softcapping", None)

    # -- facts --------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def window(self) -> int:
        """The native context window in tokens."""
        return int(self.config.max_position_embeddings)

    @property
    def sliding_window(self) -> int | None:
        """Tokens a sliding-attention layer reaches (itself included), or None without any."""
        if SLIDING_ATTENTION not in self.layer_types:
            return None
        return int(self.config.sliding_window)

    def scoring_layer(self, layers: range) -> int:
        """The layer of `layers` whose last-token logits rank a node's tokens: the last
        full-attention layer there is, else the last layer (ALGORITHM.md §4).

        A sliding layer's last query never attends past its window, so where a stage has a layer
        that reads the whole node, its attention is the one that says what the node needs.
        """
        full = [i for i in layers if self.layer_types[i] == FULL_ATTENTION]
        return full[-1] if full else layers[-1]

    @property
    def device(self) -> torch.device:
        """Where the model takes its input (the embedding's device)."""
        return execution_device(self.embed_tokens)

    def layer_devices(self) -> list[torch.device]:
        """Where each decoder layer computes, so where its keys and values live. One device,
        or several when the model was placed by accelerate (`device_map`)."""
        return [execution_device(layer) for layer in self.layers]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # -- steps --------------------------------------------------------------------------------

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`(T,)` ids -> `(1, T, hidden)` input embeddings (scaled where the model scales them)."""
        hidden: torch.Tensor = self.embed_tokens(token_ids.to(self.device).unsqueeze(0))
        if self._embedding_multiplier != 1.0:
            hidden = hidden * self._embedding_multiplier
        return hidden

    def rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> PositionEmbeddings:
        """`(cos, sin)` for `(T,)` position ids, per layer type, shared by all layers of a stage."""
        position_ids = positions.to(hidden.device).unsqueeze(0)
        if not self._rotary_per_type:
            cos, sin = self.rotary_emb(hidden, position_ids)
            return dict.fromkeys(set(self.layer_types), (cos, sin))
        return {kind: self.rotary_emb(hidden, position_ids, kind) for kind in set(self.layer_types)}

    def turning(
        self, shifts: torch.Tensor, layer_type: str = FULL_ATTENTION
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each `(1, T, rotary_dim)` float32, of the angles that move a cached key
        of a `layer_type` layer by `shifts[t]` positions (see `homer.positions.turn_keys`).

        The rotary module's attention scaling (YaRN's temperature) is divided out: the cached
        keys already carry it once.
        """
        probe = torch.zeros(1, shifts.shape[0], 1, device=self.device, dtype=torch.float32)
        position_ids = shifts.to(self.device).unsqueeze(0)
        if self._rotary_per_type:
            cos, sin = self.rotary_emb(probe, position_ids, layer_type)
            scaling = getattr(self.rotary_emb, f"{layer_type}_attention_scaling", 1.0)
        else:
            cos, sin = self.rotary_emb(probe, position_ids)
            scaling = getattr(self.rotary_emb, "attention_scaling", 1.0)
        scale = float(scaling or 1.0)
        return cos.float() / scale, sin.float() / scale

    def turnings(self, shifts: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`turning(shifts, type)` for every layer, computed once per layer type."""
        by_type = {kind: self.turning(shifts, kind) for kind in set(self.layer_types)}
        return [by_type[kind] for kind in self.layer_types]

    def attention_mask(
        self, hidden: torch.Tensor, positions: torch.Tensor | None = None
    ) -> AttentionMasks:
        """The masks for one chunk of `(1, T, hidden)` states, one per layer type.

        Each is the mask transformers builds for that layer type on a fresh sequence with no
        cache (`masking_utils`): causal, and for sliding layers no further back than the window,
        counted in tokens of this chunk. SDPA gets None where that is plain causal attention (it
        applies it on its own); eager attention gets an explicit additive mask. With `positions`
        that repeat (merged siblings), a token may also not attend to a token at a *larger
        position id*, even one earlier in the sequence: no query then sees a key from its future
        (see DESIGN.md).
        """
        restrict: Callable[..., Any] | None = None
        if positions is not None and not bool((positions[1:] >= positions[:-1]).all()):
            pos = positions.to(hidden.device)

            def restrict(batch: Any, head: Any, q_idx: Any, kv_idx: Any) -> Any:
                return pos[kv_idx] <= pos[q_idx]

        # Built with the model's own attention implementation (not homer's capturing name), no
        # cache, and no position ids: transformers would read reused positions as packed
        # sequences and cut the chunk into blocks.
        arguments = {
            "config": self.config,
            "inputs_embeds": hidden,
            "attention_mask": None,
            "cache": None,
            "and_mask_function": restrict,
        }
        masks: AttentionMasks = {}
        for kind in set(self.layer_types):
            build = (
                create_sliding_window_causal_mask
                if kind == SLIDING_ATTENTION
                else create_causal_mask
            )
            masks[kind] = build(**arguments)
        return masks

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
        position_embeddings: PositionEmbeddings,
        layers: range,
        query_layers: frozenset[int] = frozenset(),
        mask: AttentionMasks | None = None,
    ) -> LayerRun:
        """Run decoder layers `layers` on one chunk, causally over its own tokens only.

        Args:
            hidden: `(1, T, hidden)` input of the first layer in `layers`.
            position_embeddings: from `rotary` for this chunk's positions.
            layers: consecutive layer indices.
            query_layers: layers whose last-token query to record.
            mask: from `attention_mask`; None means each layer type's plain mask.
        """
        capture = _Capture(base=self._base_attention(), query_layers=query_layers)
        if mask is None:
            mask = self.attention_mask(hidden)
        with self._capturing(capture):
            for idx in layers:
                kind = self.layer_types[idx]
                out = self.layers[idx](
                    hidden,
                    attention_mask=mask[kind],
                    position_embeddings=position_embeddings[kind],
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
    def attention_after(self, past: Any, ids: list[int], start: int) -> list[torch.Tensor]:
        """Feed `ids` after the kv-cache `past` at positions `start, start + 1, ...` and return
        how they attend to the cached tokens: per layer `(H, Q, T)` float32 probabilities of
        each of the `Q` new tokens over the `T` tokens `past` held (rows sum to at most one:
        the rest goes to the new tokens themselves).

        The model's own forward runs with its eager attention for the call (the one that hands
        out its probabilities), masks and all; `past` grows by the new tokens.
        """
        held = int(past.get_seq_length())
        device = self.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
        previous = self.config._attn_implementation
        self.config._attn_implementation = "eager"
        try:
            out = self.model(
                input_ids=input_ids,
                position_ids=positions,
                use_cache=True,
                output_attentions=True,
                **cache_kwargs(self.model, past),
            )
        finally:
            self.config._attn_implementation = previous
        return [a[0, :, :, :held].float() for a in out.attentions]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(..., hidden)` last-layer output -> `(..., vocab)` float32 logits (norm, then head,
        then the model's own logit scaling or soft-capping)."""
        normed = self.norm(hidden)
        # A head placed by accelerate moves its input itself (its weight may be offloaded).
        if getattr(self.lm_head, "_hf_hook", None) is None:
            normed = normed.to(self.lm_head.weight.device)
        logits: torch.Tensor = self.lm_head(normed).float()
        if self._logits_scaling != 1.0:
            logits = logits / self._logits_scaling
        if self._final_softcap:
            logits = torch.tanh(logits / self._final_softcap) * self._final_softcap
        return logits
