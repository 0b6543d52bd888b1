"""`compress`: a document in, a fixed-length `HomerCache` out.

It is a short pipeline of named steps: the prompt's token ids, the tree's plan, the calibration
bias, the rule's word tables, the tree itself, the final positions, and the packaged cache. The
maths lives in the modules each step calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from homer.adapter import ModelAdapter
from homer.cache import CacheInfo, HomerCache
from homer.calibration import Calibration, CalibrationNeeded, calibrate
from homer.config import Ablations, HomerConfig, ResolvedConfig
from homer.errors import DocumentError
from homer.merging import NodeState
from homer.positions import compact_positions, turn_keys
from homer.prompts import PromptTemplate, encode, encode_document_spans
from homer.provenance import char_spans, kept_sources
from homer.schedule import LayerSchedule, Plan, fit_warmup
from homer.tree import ProgressCallback, ProgressEvent, SubtreeMemo, TreeInputs, TreeRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prompt:
    """The three parts of the compressed prompt: texts, and ids `(P,)`, `(C,)`, `(S,)` int64."""

    prefix_text: str
    suffix_text: str
    prefix: torch.Tensor
    context: torch.Tensor
    suffix: torch.Tensor
    offsets: torch.Tensor | None = None  # `(C, 2)` character span of each document token


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
    ablations: Ablations | None = None,
) -> HomerCache:
    """Compress `text` into a kv-cache of at most `target_len` tokens per layer.

    Args:
        model: a supported causal LM (see `homer.adapter.SUPPORTED_MODEL_TYPES`).
        tokenizer: its tokenizer.
        text: the document.
        config: HOMER settings; sizes left `None` are derived from the model.
        focus: a question to put in the suffix (query-aware); None keeps the cache generic.
        prefix / suffix: override the instruction text around the document.
        calibration: a precomputed bias (else built or loaded per model and rule).
        progress: called with a `ProgressEvent` after each calibration sample and tree node.
        memo: reuse finished subtrees across calls (see `homer.tree.SubtreeMemo`); results are
            identical to computing them again.
        ablations: take a part of HOMER out, to measure it (`homer.config.Ablations`).

    Raises:
        DocumentError: the text holds no tokens.
        UnsupportedModelError: the model's architecture cannot be driven.
        ValueError: a setting does not fit the model or the prompt.
    """
    config = config or HomerConfig()
    ablations = ablations or Ablations()
    adapter = ModelAdapter(model)
    resolved = config.resolve(num_layers=adapter.num_layers, window=adapter.window)
    prompt = _prompt_ids(tokenizer, text, focus, prefix, suffix)
    plan, schedule = _plan(adapter, resolved, prompt)
    bias = _bias(model, tokenizer, config, plan, ablations, calibration, progress)
    inputs = TreeInputs(
        prefix=prompt.prefix,
        context=prompt.context,
        suffix=prompt.suffix,
        tables=resolved.pruning.tables(prompt.context, tokenizer),
    )
    runner = TreeRunner(
        adapter,
        plan,
        schedule,
        resolved.pruning,
        bias,
        position_mask=ablations.position_mask,
        progress=progress,
        memo=memo,
    )
    root = runner.run(inputs)
    cache = _unpack(adapter, root)
    cache.spans = _spans(prompt, inputs.tables.word_ids, root)
    del root  # its keys are now held once, so each old key is freed as soon as it is turned
    if ablations.compact_positions:
        cache.positions = _final_positions(adapter, cache.keys, cache.positions)
    return _package(cache, adapter.model_type, prompt, plan, schedule, resolved, ablations, focus)


def _prompt_ids(
    tokenizer: Any, text: str, focus: str | None, prefix: str | None, suffix: str | None
) -> _Prompt:
    """The instruction before the document, the document, and the suffix after it, as ids."""
    template = PromptTemplate.for_tokenizer(tokenizer)
    prefix_text = template.prefix() if prefix is None else prefix
    suffix_text = template.suffix(focus) if suffix is None else suffix
    prefix_ids = encode(tokenizer, prefix_text)
    if template.add_bos:
        prefix_ids = [tokenizer.bos_token_id, *prefix_ids]
    context, offsets = encode_document_spans(tokenizer, text)
    if context.numel() == 0:
        raise DocumentError("the document holds no text to compress")
    return _Prompt(
        prefix_text=prefix_text,
        suffix_text=suffix_text,
        prefix=torch.tensor(prefix_ids, dtype=torch.long),
        context=context,
        suffix=torch.tensor(encode(tokenizer, suffix_text), dtype=torch.long),
        offsets=offsets,
    )


def _plan(
    adapter: ModelAdapter, resolved: ResolvedConfig, prompt: _Prompt
) -> tuple[Plan, LayerSchedule]:
    """The tree's sizes and the layers each level runs (warm-up lowered if the tree is tall)."""
    plan = Plan(
        context_len=int(prompt.context.numel()),
        prefix_len=int(prompt.prefix.numel()),
        suffix_len=int(prompt.suffix.numel()),
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
    return plan, schedule


def _bias(
    model: torch.nn.Module,
    tokenizer: Any,
    config: HomerConfig,
    plan: Plan,
    ablations: Ablations,
    calibration: Calibration | None,
    progress: ProgressCallback | None,
) -> torch.Tensor | None:
    """`(num_layers, max_distance)` calibration bias, or None when nothing is pruned or the
    bias is ablated."""
    prunes = plan.final_len < plan.prefix_len + plan.context_len + plan.suffix_len
    if not (ablations.calibrated_bias and prunes):
        return None
    if calibration is None:

        def on_sample(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressEvent("calibrate", done, total))

        def on_measure(need: CalibrationNeeded) -> None:
            if progress is not None:  # before the first sample: what is measured, and why
                progress(ProgressEvent("calibrate", 0, need.samples, calibration=need))

        calibration = calibrate(
            model, tokenizer, config, on_sample=on_sample, on_measure=on_measure
        )
    return calibration.bias


def _final_positions(
    adapter: ModelAdapter, keys: list[torch.Tensor], positions: torch.Tensor
) -> torch.Tensor:
    """Turn every layer's keys (in place in `keys`) to consecutive positions in document order,
    and return those `(T,)` positions.

    Merged leaves all reused one position range; a question reads the kept tokens far better as
    one sequence (docs/ALGORITHM.md). Only keys carry position, so values stay as they are.
    """
    compact = compact_positions(positions)
    if torch.equal(compact, positions):
        return positions
    with torch.inference_mode():
        turnings = adapter.turnings(compact - positions)  # per layer: Gemma 3 has two RoPEs
        for i, k in enumerate(keys):
            cos, sin = turnings[i]
            keys[i] = turn_keys(k, cos.to(k.device), sin.to(k.device))
    return compact


def _spans(prompt: _Prompt, doc_words: torch.Tensor, root: NodeState) -> torch.Tensor | None:
    """`(T, 2)` character spans of the root's tokens in the document (`homer.provenance`), or
    None when the tokenizer gave no offsets."""
    if prompt.offsets is None:
        return None
    sources = kept_sources(
        root.token_ids.cpu(), root.word_ids.cpu(), prompt.context, doc_words.cpu()
    )
    return char_spans(sources, prompt.offsets)


@dataclass
class _Tensors:
    """The root's tensors on their way into a `HomerCache` (keys may still be turned)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    token_ids: torch.Tensor
    positions: torch.Tensor
    last_logits: torch.Tensor
    spans: torch.Tensor | None = None


def _unpack(adapter: ModelAdapter, root: NodeState) -> _Tensors:
    """The root's keys and values, its token ids and positions, and the `(vocab,)` logits of
    its last token (the prediction after the whole prompt)."""
    return _Tensors(
        keys=list(root.keys),
        values=list(root.values),
        token_ids=root.token_ids.cpu(),
        positions=root.positions.cpu(),
        last_logits=adapter.logits(root.hidden[:, -1:, :]).reshape(-1).cpu(),
    )


def _package(
    tensors: _Tensors,
    model_type: str,
    prompt: _Prompt,
    plan: Plan,
    schedule: LayerSchedule,
    resolved: ResolvedConfig,
    ablations: Ablations,
    focus: str | None,
) -> HomerCache:
    """The cache, with what made it."""
    info = CacheInfo(
        prefix_text=prompt.prefix_text,
        suffix_text=prompt.suffix_text,
        focus=focus,
        document_tokens=plan.context_len,
        prefix_tokens=plan.prefix_len,
        suffix_tokens=plan.suffix_len,
        num_chunks=plan.num_chunks,
        height=plan.height,
        settings={
            **resolved.to_dict(),
            "warmup_layers": schedule.warmup,
            "ablations": ablations.to_dict(),
        },
        model_type=model_type,
    )
    return HomerCache(
        keys=tensors.keys,
        values=tensors.values,
        token_ids=tensors.token_ids,
        positions=tensors.positions,
        last_logits=tensors.last_logits,
        info=info,
        spans=tensors.spans,
    )
