"""Named variants of `HomerConfig`: one table for every benchmark's rules and methods.

The needles benchmark names a variant directly (`--methods shared`); passkey and perplexity
prefix it with `homer-` (`--methods homer-shared`). A variant is the library default with the
fields below changed, so a result file's method name says exactly which settings made it.
"""

from __future__ import annotations

from typing import Any

#: Variant name -> the `HomerConfig` fields it changes from the library default.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"reduction": "paper"},  # the paper's single-token rule
    "nobias": {"bias": None},  # raw significance logits, no calibration bias
    "no-rarity": {"rare_word_boost": 0},  # without the in-document rarity prior
    "no-runs": {"run_radius": 0},  # session 5's default
    "no-keep-facts": {"keep_facts": False},  # session 6's default
    "paper-positions": {"positions": "paper"},  # the positions the merges left
    "shared": {"sibling_budget": "shared"},  # siblings split their room by one ranking
    "seqmask": {"merge_mask": "sequence"},
    "posmask": {"merge_mask": "position"},
}


def homer_config(variant: str = "default", **overrides: Any) -> Any:
    """The `HomerConfig` of `variant`, with `overrides` set on top (say, `warmup_layers`)."""
    from homer import HomerConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return HomerConfig(**{**VARIANTS[variant], **overrides})


def method_variant(method: str) -> str:
    """The variant behind a `homer-...` method name: `homer` -> `default`, `homer-shared` ->
    `shared`; RoPE suffixes (`homer+yarn`) are the method's business, not the variant's."""
    base = method.split("+")[0]
    return "default" if base == "homer" else base.removeprefix("homer-")
