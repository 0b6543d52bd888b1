"""Named variants of HOMER's settings: one table for every benchmark's rules and methods.

The needles benchmark names a variant directly (`--methods shared`); passkey and perplexity
prefix it with `homer-` (`--methods homer-shared`). A variant is the library default with a
different pruning rule (`homer.pruning`) or with one part of HOMER taken out
(`homer.config.Ablations`), so a result file's method name says exactly which settings made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homer.config import Ablations, HomerConfig
from homer.pruning import PaperPruning, PruningRule, SpanPruning


@dataclass(frozen=True)
class Variant:
    """A pruning rule and the ablations that go with it."""

    pruning: PruningRule = field(default_factory=SpanPruning)
    ablations: Ablations = field(default_factory=Ablations)


#: Variant name -> what it changes from the library default.
VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "paper": Variant(PaperPruning()),  # the paper's single-token rule
    "nobias": Variant(ablations=Ablations(calibrated_bias=False)),  # raw significance logits
    "no-rarity": Variant(SpanPruning(rare_word_boost=0)),  # without the rarity prior
    "no-runs": Variant(SpanPruning(run_radius=0)),
    "no-keep-facts": Variant(SpanPruning(keep_facts=False)),
    "paper-positions": Variant(ablations=Ablations(compact_positions=False)),  # merges' positions
    "shared": Variant(SpanPruning(sibling_budget="shared")),  # one ranking of both siblings
    "seqmask": Variant(),  # the default merge mask, named for the A/B with posmask
    "posmask": Variant(ablations=Ablations(position_mask=True)),
}


def variant(name: str = "default") -> Variant:
    """The variant called `name`."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return VARIANTS[name]


def homer_config(name: str = "default", **sizes: Any) -> HomerConfig:
    """The `HomerConfig` of variant `name`, with `sizes` set on top (say, `warmup_layers`);
    compress with `ablations=variant(name).ablations` too."""
    return HomerConfig(pruning=variant(name).pruning, **sizes)


def method_variant(method: str) -> str:
    """The variant behind a `homer-...` method name: `homer` -> `default`, `homer-shared` ->
    `shared`; RoPE suffixes (`homer+yarn`) are the method's business, not the variant's."""
    base = method.split("+")[0]
    return "default" if base == "homer" else base.removeprefix("homer-")
