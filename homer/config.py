"""HOMER's settings: what a user chooses, and its resolution against a concrete model.

`HomerConfig` holds the paper's three sizes (each `None` means "derive it from the model") and the
pruning rule (`homer.pruning`). `HomerConfig.resolve` turns it into a `ResolvedConfig` with
concrete integers for one model. `Ablations` are the switches that exist to measure what a part
of HOMER is worth; they are an argument of `compress`, not part of a user's settings. Nothing
here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homer.pruning import PruningRule, SpanPruning

#: The paper uses 12 warm-up layers for 32-layer Llama-2 models (the `homer-paper-warmup`
#: ablation keeps that share of any model's depth).
PAPER_WARMUP_FRACTION = 12 / 32

#: Our default share: half the model's depth, rounded. On the embedded 30-layer model, 15 warm-up
#: layers instead of the paper's 11 raised passkey retrieval on 15 (length, depth) conditions
#: from 6/15 to 10/15 (14-18 layers all did better than 11) and on 30 fresh ones from 16/30 to
#: 18/30 (docs/notes/): chunks keep more layers of full, unpruned context before pruning.
DEFAULT_WARMUP_FRACTION = 1 / 2

#: The content key of a cache built with the default rule, as homer recorded it before pruning
#: rules were objects: kept so re-ingesting a document finds the cache saved back then.
_SPAN_DEFAULT_KEY = {
    "bias": "calibrated",
    "reduction": "spans",
    "merge_mask": "sequence",
    "rare_word_boost": None,
    "positions": "compact",
    "run_radius": None,
    "keep_facts": None,
    "sibling_budget": None,
}


def default_warmup_layers(num_layers: int) -> int:
    """Warm-up layers for a model of `num_layers`: `DEFAULT_WARMUP_FRACTION` of its depth, rounded
    (lowered later by `fit_warmup` when a tall tree needs the layers)."""
    return round(num_layers * DEFAULT_WARMUP_FRACTION)


@dataclass(frozen=True)
class HomerConfig:
    """What the user chooses. `None` sizes are derived from the model by `resolve`.

    Attributes:
        max_chunk_len: tokens per leaf chunk, prefix and suffix included (`M`). Default: half the
            model's native window.
        target_len: tokens per layer in the final cache. Default: `max_chunk_len`. Must not
            exceed `max_chunk_len` (a merged node never holds more than about `M` tokens).
        warmup_layers: layers every leaf runs alone before any merge (`W`). Default: half the
            model's depth (the paper used 12/32; see `DEFAULT_WARMUP_FRACTION`).
        pruning: how each node scores and keeps its tokens (`homer.pruning`): `SpanPruning()`
            (default) or `PaperPruning()`, or a rule of your own.
    """

    max_chunk_len: int | None = None
    target_len: int | None = None
    warmup_layers: int | None = None
    pruning: PruningRule = field(default_factory=SpanPruning)

    def __post_init__(self) -> None:
        for name in ("max_chunk_len", "target_len"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 8
            ):
                raise ValueError(f"{name} must be an integer >= 8 or None, got {value!r}")
        if self.warmup_layers is not None and (
            isinstance(self.warmup_layers, bool)
            or not isinstance(self.warmup_layers, int)
            or self.warmup_layers < 0
        ):
            raise ValueError(
                f"warmup_layers must be an integer >= 0 or None, got {self.warmup_layers!r}"
            )
        if (
            self.max_chunk_len is not None
            and self.target_len is not None
            and self.target_len > self.max_chunk_len
        ):
            raise ValueError(
                f"target_len ({self.target_len}) cannot exceed max_chunk_len "
                f"({self.max_chunk_len}): raise max_chunk_len or lower target_len"
            )
        if not isinstance(self.pruning, PruningRule):
            raise ValueError(
                f"pruning must be a homer.pruning rule (SpanPruning(), PaperPruning(), ...), "
                f"got {self.pruning!r}"
            )

    def key_settings(self) -> dict[str, Any]:
        """The settings as the store's content key and metadata record them (JSON-able)."""
        sizes = {
            "max_chunk_len": self.max_chunk_len,
            "target_len": self.target_len,
            "warmup_layers": self.warmup_layers,
        }
        if self.pruning == SpanPruning():
            return {**sizes, **_SPAN_DEFAULT_KEY}
        return {**sizes, "pruning": self.pruning.settings()}

    def resolve(self, *, num_layers: int, window: int) -> ResolvedConfig:
        """Concrete sizes for a model with `num_layers` decoder layers and a `window`-token context.

        Raises:
            ValueError: a size does not fit the model (named in the message, with the fix).
        """
        max_chunk = self.max_chunk_len if self.max_chunk_len is not None else window // 2
        if max_chunk > window:
            raise ValueError(
                f"max_chunk_len ({max_chunk}) exceeds the model's context window ({window}); "
                f"use at most {window}"
            )
        target = self.target_len if self.target_len is not None else max_chunk
        if target > max_chunk:
            raise ValueError(
                f"target_len ({target}) cannot exceed max_chunk_len ({max_chunk}): "
                "raise max_chunk_len or lower target_len"
            )
        warmup = (
            self.warmup_layers
            if self.warmup_layers is not None
            else default_warmup_layers(num_layers)
        )
        if warmup >= num_layers:
            raise ValueError(
                f"warmup_layers ({warmup}) must be smaller than the model's {num_layers} layers"
            )
        return ResolvedConfig(
            max_chunk_len=max_chunk,
            target_len=target,
            warmup_layers=warmup,
            num_layers=num_layers,
            window=window,
            pruning=self.pruning,
        )


@dataclass(frozen=True)
class ResolvedConfig:
    """`HomerConfig` with every size made concrete for one model."""

    max_chunk_len: int
    target_len: int
    warmup_layers: int
    num_layers: int
    window: int
    pruning: PruningRule = field(default_factory=SpanPruning)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_chunk_len": self.max_chunk_len,
            "target_len": self.target_len,
            "warmup_layers": self.warmup_layers,
            "num_layers": self.num_layers,
            "window": self.window,
            "pruning": self.pruning.settings(),
        }


@dataclass(frozen=True)
class Ablations:
    """Switches that take a part of HOMER out, to measure what it is worth. The defaults are
    HOMER; a user has no reason to change them. Recorded in a cache's settings.

    Attributes:
        calibrated_bias: subtract the per-model, per-distance calibration bias from the
            significance scores (the paper's rule); False ranks by raw logits.
        position_mask: in merged nodes, also forbid attending to larger position ids (the
            merged halves reuse one position range); measured not worth a default.
        compact_positions: turn the final cache's keys to consecutive positions `0 .. T-1` in
            document order, so a question reads the kept tokens as one sequence; False keeps
            the positions the merges left, where every leaf reused the same range (passkey on
            the embedded model: 53/60 against 36/60 over 8k-32k, at 0.4-0.9% in perplexity).
    """

    calibrated_bias: bool = True
    position_mask: bool = False
    compact_positions: bool = True

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")

    def to_dict(self) -> dict[str, bool]:
        return {
            "calibrated_bias": self.calibrated_bias,
            "position_mask": self.position_mask,
            "compact_positions": self.compact_positions,
        }
