"""`compress`: a document in, a fixed-length `HomerCache` out.

It turns text into the three prompt parts, sizes the tree, fetches the calibration bias, runs
the tree and packages the root as a `HomerCache`. The maths lives in the modules it calls.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from homer.adapter import ModelAdapter
from homer.cache import CacheInfo, HomerCache
from homer.calibration import Calibration, calibrate
from homer.config import HomerConfig
from homer.errors import DocumentError
from homer.positions import compact_positions, turn_keys
from homer.prompts import PromptTemplate, encode, encode_document
from homer.schedule import LayerSchedule, Plan, fit_warmup
from homer.tree import ProgressCallback, ProgressEvent, SubtreeMemo, TreeInputs, TreeRunner
from homer.words import (
    RARE_RADIUS,
    RARE_SHARE,
    fact_words,
    token_kinds,
    token_traits,
    widen,
    word_ids,
    word_rarity,
)

logger = logging.getLogger(__name__)


def _ids(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def compress(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    config: HomerConfig | None = None,
    focus: str | None = None,
    *,
    prefix: str | None = None,
    suffix: str | None = None,
    calibration: Calibration | None = None,
    progress: ProgressCallback | None = None,
    memo: SubtreeMemo | None = None,
) -> HomerCache:
    """Compress `text` into a kv-cache of at most `target_len` tokens per layer.

    Args:
        model: a supported causal LM (see `homer.adapter.SUPPORTED_MODEL_TYPES`).
        tokenizer: its tokenizer.
        text: the document.
        config: HOMER settings; sizes left `None` are derived from the model.
        focus: a question to put in the suffix (query-aware); None keeps the cache generic.
        prefix / suffix: override the instruction text around the document.
        calibration: a precomputed bias (else built or loaded per model when `config.bias` says
            so).
        progress: called with a `ProgressEvent` after each calibration sample and tree node.
        memo: reuse finished subtrees across calls (see `homer.tree.SubtreeMemo`); results are
            identical to computing them again.

    Raises:
        DocumentError: the text holds no tokens.
        UnsupportedModelError: the model's architecture cannot be driven.
        ValueError: a setting does not fit the model or the prompt.
    """
    config = config or HomerConfig()
    adapter = ModelAdapter(model)
    resolved = config.resolve(num_layers=adapter.num_layers, window=adapter.window)
    template = PromptTemplate.for_tokenizer(tokenizer)
    prefix_text = template.prefix() if prefix is None else prefix
    suffix_text = template.suffix(focus) if suffix is None else suffix

    prefix_ids = encode(tokenizer, prefix_text)
    if template.add_bos:
        prefix_ids = [tokenizer.bos_token_id, *prefix_ids]
    suffix_ids = encode(tokenizer, suffix_text)
    context = encode_document(tokenizer, text)
    if context.numel() == 0:
        raise DocumentError("the document holds no text to compress")
    plan = Plan(
        context_len=int(context.numel()),
        prefix_len=len(prefix_ids),
        suffix_len=len(suffix_ids),
        max_chunk_len=resolved.max_chunk_len,
        target_len=resolved.target_len,
    )
    warmup = fit_warmup(adapter.num_layers, resolved.warmup_layers, plan.height)
    schedule = LayerSchedule(adapter.num_layers, warmup, plan.height)
    logger.info(
        "compressing %d tokens: %d chunks, height %d, %d warm-up layers, %d layers per level",
        plan.context_len,
        plan.num_chunks,
        plan.height,
        warmup,
        schedule.layers_per_level,
    )

    bias = None
    if (
        resolved.bias == "calibrated"
        and plan.final_len < plan.prefix_len + plan.context_len + plan.suffix_len
    ):
        if calibration is None:

            def on_sample(done: int, total: int) -> None:
                if progress is not None:
                    progress(ProgressEvent("calibrate", done, total))

            calibration = calibrate(model, tokenizer, config, on_sample=on_sample)
        bias = calibration.bias

    keep_facts = resolved.keep_facts and resolved.run_radius > 0  # facts only yield to runs
    runner = TreeRunner(
        adapter,
        plan,
        schedule,
        bias,
        whole_words=resolved.reduction == "spans",
        progress=progress,
        memo=memo,
        position_mask=resolved.merge_mask == "position",
        rare_word_boost=resolved.rare_word_boost,
        run_radius=resolved.run_radius,
        keep_facts=keep_facts,
        shared_budget=resolved.sibling_budget == "shared",
    )
    words = word_ids(context, token_kinds(tokenizer))
    widened: torch.Tensor | None = None
    fact_table: torch.Tensor | None = None
    if resolved.rare_word_boost or keep_facts:
        facts = fact_words(context, words, token_traits(tokenizer))
        rarity = word_rarity(context, words, facts)
        if resolved.rare_word_boost:
            widened = widen(rarity, RARE_RADIUS, RARE_SHARE)
        if keep_facts:
            fact_table = facts & (rarity > 0)
    inputs = TreeInputs(
        prefix=_ids(prefix_ids),
        context=context,
        suffix=_ids(suffix_ids),
        context_words=words,
        word_rarity=widened,
        word_facts=fact_table,
    )
    root = runner.run(inputs)
    last_logits = adapter.logits(root.hidden[:, -1:, :]).reshape(-1).cpu()
    keys, values, token_ids = list(root.keys), root.values, root.token_ids.cpu()
    positions = root.positions.cpu()
    del root  # without a memo holding it, each old key tensor is freed as soon as it is turned
    compact = compact_positions(positions)
    if resolved.positions == "compact" and not torch.equal(compact, positions):
        # Merged leaves all reused one position range; a question reads the kept tokens far
        # better as one sequence in document order (docs/RESULTS.md). Only keys carry position.
        with torch.inference_mode():
            cos, sin = adapter.turning(compact - positions)
            for i, k in enumerate(keys):
                keys[i] = turn_keys(k, cos.to(k.device), sin.to(k.device))
        positions = compact
    info = CacheInfo(
        prefix_text=prefix_text,
        suffix_text=suffix_text,
        focus=focus,
        document_tokens=plan.context_len,
        prefix_tokens=plan.prefix_len,
        suffix_tokens=plan.suffix_len,
        num_chunks=plan.num_chunks,
        height=plan.height,
        settings={**resolved.to_dict(), "warmup_layers": warmup},
        model_type=adapter.model_type,
    )
    return HomerCache(
        keys=keys,
        values=values,
        token_ids=token_ids,
        positions=positions,
        last_logits=last_logits,
        info=info,
    )
