"""Passkey retrieval: a 5-digit key hidden at a known depth in repetitive filler text.

    python -m benchmarks.passkey --lengths 8000 16000 32000 --trials 20
    python -m benchmarks.passkey --model FILE.gguf --lengths 65536 --trials 10 \
        --baseline-trials 10 --methods homer truncated ntk

`--model` takes any model homer loads (a GGUF file, a folder, a Hub id); every record has its
time and its peak memory above the loaded model (`benchmarks.memory.Meter`: resident set on the
CPU, allocated memory on CUDA).

For every length and trial, the same haystack and key go to every method, so methods are
compared on identical inputs. Methods:

- `homer`: query-agnostic HOMER (generic suffix), default settings.
- `homer-aware`: the question in the suffix (the paper's setting).
- `homer-nobias`: query-agnostic, no calibration bias (ablation).
- `homer-paper`: query-agnostic with the paper's single-token reduction rule.
- `homer-paper-warmup`: the paper's warm-up share, 12/32 of the layers (ablation of the default).
- `homer-shared`: siblings split their merged node's room by score
  (`SpanPruning(sibling_budget="shared")`).
- `homer-seqmask`, `homer-posmask`, `homer-aware-posmask`: the merge mask set explicitly
  (`Ablations(position_mask=...)`, an A/B of the two masks).
- `plain`: the model on the whole input (past its window beyond 8k tokens).
- `truncated`: the model on the prompt with the document cut to its tail to fit the window.
- `ntk`, `yarn`: the plain model with dynamic-NTK or YaRN RoPE scaling set in its config.
- `homer+ntk`, `homer+yarn`: HOMER on the model with that RoPE scaling.

The prompt is the standard passkey one: an instruction to find and memorize hidden information,
the haystack, then "What is the pass key? The pass key is" and greedy decoding of 12 tokens
(query-aware HOMER compresses the question with the document and continues with "The pass key
is");
a trial is right when the key appears in the answer. Token counts are exact: the haystack is
whole filler sentences and the needle replaces none, so every trial of a length has the same
number of document tokens and HOMER's unchanged subtrees are reused (`SubtreeMemo`, bit-exact).
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import load, reload_with
from benchmarks.report import method_table, pyplot, rate, save_figure, show, write_result
from benchmarks.variants import homer_config, variant

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
INSTRUCTION = (
    "There is important information hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n\n"
)
SUFFIX = "\n\n(End of document.)"
QUESTION = "\n\nWhat is the pass key?"
PRIMER = " The pass key is"
MAX_NEW = 12
#: Needle depths span 10%..90% of the haystack; heat maps group them into these bands.
DEPTH_LOW, DEPTH_HIGH, DEPTH_BANDS = 0.1, 0.9, 5


def trial_depth(trial: int) -> float:
    """Depth of trial `trial`: distinct for every trial, spread evenly over 10%..90% by a
    van der Corput sequence, so the first few trials already cover the range (10%, 50%, 30%,
    70%, 20%, ...). With repetitive filler a needle's neighbourhood is set by its depth alone,
    so repeating a few depths would repeat the same few conditions."""
    fraction, denominator, n = 0.0, 1.0, trial
    while n:
        denominator *= 2
        n, bit = divmod(n, 2)
        fraction += bit / denominator
    return round(DEPTH_LOW + (DEPTH_HIGH - DEPTH_LOW) * fraction, 4)


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "homer" | "plain" | "truncated"
    rope: str | None = None  # None | "ntk" | "yarn"
    focus: bool = False
    variant: str = "default"  # a `benchmarks.variants` name: the HomerConfig of HOMER methods
    paper_warmup: bool = False  # the paper's 12/32 warm-up share instead of the default
    reread: bool = False  # answer from a plain prefill of the kept token ids (a diagnostic)
    reask: bool = False  # query-aware, and the question is asked again after the cache


METHODS = {
    m.name: m
    for m in [
        Method("homer", "homer"),
        Method("homer-aware", "homer", focus=True),
        Method("homer-nobias", "homer", variant="nobias"),
        Method("homer-paper", "homer", variant="paper"),
        Method("homer-paper-warmup", "homer", paper_warmup=True),
        Method("homer-paper-positions", "homer", variant="paper-positions"),
        Method("homer-shared", "homer", variant="shared"),
        Method("homer-aware-paper-positions", "homer", focus=True, variant="paper-positions"),
        Method("homer-reread", "homer", reread=True),
        Method("homer-aware-reask", "homer", focus=True, reask=True),
        Method("homer-seqmask", "homer", variant="seqmask"),
        Method("homer-posmask", "homer", variant="posmask"),
        Method("homer-aware-posmask", "homer", focus=True, variant="posmask"),
        Method("plain", "plain"),
        Method("truncated", "truncated"),
        Method("ntk", "plain", rope="ntk"),
        Method("yarn", "plain", rope="yarn"),
        Method("homer+ntk", "homer", rope="ntk"),
        Method("homer+yarn", "homer", rope="yarn"),
    ]
}


def haystack(tokenizer: Any, length: int, depth: float, key: int) -> str:
    """About `length` tokens of filler with the needle after `depth` of the filler sentences."""
    per = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    reps = max(2, length // per)
    at = round(reps * depth)
    return FILLER * at + NEEDLE.format(key=key) + FILLER * (reps - at)


def rope_parameters(model: Any, kind: str, length: int) -> dict[str, Any]:
    """RoPE scaling as a user would put it in config.json, sized for `length` tokens."""
    window = int(model.config.max_position_embeddings)
    base = dict(model.config.rope_parameters or {})
    theta = base.get("rope_theta", getattr(model.config, "rope_theta", 10000.0))
    factor = max(1.0, (length + 64) / window)
    if kind == "ntk":
        return {"rope_type": "dynamic", "rope_theta": theta, "factor": factor}
    return {
        "rope_type": "yarn",
        "rope_theta": theta,
        "factor": factor,
        "original_max_position_embeddings": window,
    }


def greedy(model: Any, ids: list[int], max_new: int) -> list[int]:
    """Plain greedy decoding over a full prompt (logits for the last position only)."""
    from homer.adapter import cache_kwargs, output_cache

    out: list[int] = []
    past = None
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(max_new):
            res = model(
                input_ids=inputs, use_cache=True, logits_to_keep=1, **cache_kwargs(model, past)
            )
            past = output_cache(res)
            token = int(res.logits[0, -1].argmax())
            out.append(token)
            inputs = torch.tensor([[token]])
    return out


def run_plain(model: Any, tokenizer: Any, text: str, truncate: bool) -> str:
    def enc(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"])

    head, doc, tail = enc(INSTRUCTION), enc(text), enc(SUFFIX + QUESTION + PRIMER)
    if truncate:
        budget = int(model.config.max_position_embeddings) - len(head) - len(tail) - MAX_NEW
        doc = doc[-budget:]
    return str(tokenizer.decode(greedy(model, head + doc + tail, MAX_NEW)))


def ask_homer(
    model: Any,
    tokenizer: Any,
    text: str,
    config: Any,
    focus: bool,
    memo: Any,
    reread: bool = False,
    reask: bool = False,
    ablations: Any = None,
) -> tuple[str, str]:
    """HOMER's answer under `config` (a `HomerConfig`) and the text of the tokens its cache kept.

    Query-aware (`focus`): the question ends the suffix, as in the paper; either way the model
    sees the same token sequence as the plain baseline, only compressed. `reread`: a diagnostic
    that throws HOMER's keys and values away and lets the plain model read the kept token ids
    as one ordinary sequence. `reask`: with `focus`, ask the question again after the cache, as
    `homer ask` does on a cache ingested with `--focus`.
    """
    from homer import compress, generate

    suffix = SUFFIX + QUESTION if focus else SUFFIX
    ask = PRIMER if focus and not reask else QUESTION + PRIMER
    cache = compress(
        model,
        tokenizer,
        text,
        config,
        prefix=INSTRUCTION,
        suffix=suffix,
        memo=memo,
        ablations=ablations,
    )
    if reread:
        ids = [*cache.token_ids.tolist(), *tokenizer(ask, add_special_tokens=False)["input_ids"]]
        answer = str(tokenizer.decode(greedy(model, ids, MAX_NEW)))
    else:
        stream = generate(model, tokenizer, cache, ask, max_new_tokens=MAX_NEW, raw=True)
        answer = "".join(stream)
    return answer, str(tokenizer.decode(cache.token_ids))


def run_homer(
    model: Any, tokenizer: Any, text: str, method: Method, memo: Any, max_chunk: int | None = None
) -> tuple[str, str]:
    """HOMER's answer for `method` and the text of the tokens its cache kept; `max_chunk` sets
    the chunk and final-cache size (default: half the model's window)."""
    from homer.config import PAPER_WARMUP_FRACTION

    extra: dict[str, Any] = {}
    if max_chunk is not None:
        extra |= {"max_chunk_len": max_chunk, "target_len": max_chunk}
    if method.paper_warmup:
        extra["warmup_layers"] = round(model.config.num_hidden_layers * PAPER_WARMUP_FRACTION)
    config = homer_config(method.variant, **extra)
    return ask_homer(
        model,
        tokenizer,
        text,
        config,
        method.focus,
        memo,
        reread=method.reread,
        reask=method.reask,
        ablations=variant(method.variant).ablations,
    )


def heatmaps(
    records: list[dict[str, Any]], methods: list[str], lengths: list[int], name: str, model: str
) -> str:
    """One accuracy heat map (depth x length) per method, side by side; returns the PNG path."""
    plt = pyplot()
    width = (DEPTH_HIGH - DEPTH_LOW) / DEPTH_BANDS
    edges = [DEPTH_LOW + width * i for i in range(DEPTH_BANDS + 1)]
    labels = [f"{a:.0%}-{b:.0%}" for a, b in itertools.pairwise(edges)]

    def band(depth: float) -> int:
        return min(DEPTH_BANDS - 1, int((depth - DEPTH_LOW) / width))

    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        grid = torch.full((DEPTH_BANDS, len(lengths)), float("nan"))
        for i in range(DEPTH_BANDS):
            for j, length in enumerate(lengths):
                hits = [
                    r["correct"]
                    for r in records
                    if r["method"] == method and r["length"] == length and band(r["depth"]) == i
                ]
                if hits:
                    grid[i, j] = sum(hits) / len(hits)
        ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{n // 1000}k" for n in lengths], fontsize=7)
        ax.set_yticks(range(DEPTH_BANDS), labels, fontsize=7)
        for i in range(DEPTH_BANDS):
            for j in range(len(lengths)):
                if not torch.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=6)
    axes[0][0].set_ylabel("needle depth")
    fig.suptitle(f"Passkey accuracy by length and depth ({model})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, f"{name}_heatmap.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8000, 16000, 32000])
    parser.add_argument("--trials", type=int, default=20, help="trials per length for HOMER")
    parser.add_argument("--baseline-trials", type=int, default=5, help="trials for plain models")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["homer", "homer-aware", "homer-nobias", "plain", "truncated"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a model homer loads (default: embedded)")
    parser.add_argument(
        "--max-chunk",
        type=int,
        default=None,
        help="HOMER's tokens per chunk and per layer of the final cache (default: half the window)",
    )
    parser.add_argument("--name", default="passkey")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {sorted(METHODS)}")

    from benchmarks.memory import Meter
    from homer.tree import SubtreeMemo

    base, tokenizer = load(args.model)
    device = str(base.device)
    window = int(base.config.max_position_embeddings)
    model_label = f"{args.model or 'SmolLM2-135M'}, {window // 1000}k window"
    records: list[dict[str, Any]] = []
    for length in args.lengths:
        rng = random.Random(args.seed * 1000 + length)
        trials = [(trial_depth(t), rng.randint(10000, 99999)) for t in range(args.trials)]
        for name in args.methods:
            method = METHODS[name]
            model = base
            if method.rope:
                model = reload_with(
                    base, rope_parameters=rope_parameters(base, method.rope, length)
                )
            memo = SubtreeMemo(capacity=24)
            count = (
                args.trials if method.kind == "homer" else min(args.trials, args.baseline_trials)
            )
            for t, (depth, key) in enumerate(trials[:count]):
                text = haystack(tokenizer, length, depth, key)
                meter = Meter(device)
                began = time.perf_counter()
                kept = None
                if method.kind == "homer":
                    answer, kept_text = run_homer(
                        model, tokenizer, text, method, memo, args.max_chunk
                    )
                    kept = str(key) in kept_text
                else:
                    answer = run_plain(model, tokenizer, text, truncate=method.kind == "truncated")
                seconds = time.perf_counter() - began
                peak = meter.peak()
                record = {
                    "method": name,
                    "length": length,
                    "trial": t,
                    "depth": depth,
                    "key": key,
                    "answer": answer,
                    "correct": str(key) in answer,
                    "key_in_cache": kept,
                    "seconds": round(seconds, 2),
                    "peak_mib": round(peak, 1),
                }
                if args.max_chunk is not None and method.kind == "homer":
                    record["max_chunk"] = args.max_chunk
                records.append(record)
                print(
                    f"{name:13s} {length:6d} depth={depth:.3f} key={key} "
                    f"{'OK ' if record['correct'] else 'no '} {seconds:6.1f}s {peak:7.0f} MiB "
                    f"{answer!r}",
                    flush=True,
                )
                write_result(args.name, {"records": records})
            del memo

    def accuracy(name: str, length: int) -> str | None:
        hits = [r["correct"] for r in records if r["method"] == name and r["length"] == length]
        return rate(sum(hits), len(hits)) if hits else None

    lengths = list(args.lengths)
    table = method_table(args.methods, lengths, lambda n: f"{n // 1000}k", accuracy)
    image = heatmaps(records, list(args.methods), lengths, args.name, model_label)
    write_result(
        args.name, {"model": model_label, "records": records, "table": table, "heatmap": image}
    )
    show(table, image, "heat map")


if __name__ == "__main__":
    main()
