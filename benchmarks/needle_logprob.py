"""How well can the model read a needle back? Log-probability of its key, a graded answer metric.

    python -m benchmarks.needle_logprob --context haystack --length 16000
    python -m benchmarks.needle_logprob --context excerpt --chars 24000 --max-chunk-len 8192

Greedy answers right/wrong are too coarse to compare settings on ten needles. This scores, for
the same needles as `benchmarks.needles`, the log-probability of the key (the code or the name)
after the question and the answer's own opening ("The combination of the harbour safe is"), and
the attention the model's best head puts on the cached key when it is about to say it. Both read
what the cache offers, whatever the model would have generated.

Contexts: `haystack` (the whole needle haystack of `--length` tokens), `excerpt` (`--chars`
characters around the needle), or `runs` (a diagnostic of what the model can read: runs of
`--run-len` consecutive haystack tokens, `--run-tokens` in all, spread evenly over the haystack,
one of them centred on the needle, joined in document order and read by the plain model in
its native window; `--run-len` equal to `--run-tokens` is one contiguous excerpt). Sizes left
unset take HOMER's defaults; a one-chunk context with `--target-len` at least its length is the
plain model's exact prefill. `--random-scores`
replaces the attention significance with random numbers (the rarity prior still applies), to
test whether *which* tokens are kept matters.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.common import load, natural_prose
from benchmarks.needles import excerpt, haystack, insert, locate, make_needle
from benchmarks.report import write_result
from homer.pruning import SpanPruning


def score(model: Any, tokenizer: Any, cache: Any, needle: Any) -> dict[str, Any]:
    """Log p(key | question, answer opening) and the best head's attention mass on the key."""
    from homer.adapter import cache_kwargs
    from homer.prompts import PromptTemplate, encode

    template = PromptTemplate.for_tokenizer(tokenizer)
    opening = needle.sentence[: needle.sentence.index(needle.key)].rstrip()
    prompt = encode(tokenizer, template.continuation(needle.question) + opening)
    key = encode(tokenizer, " " + needle.key)
    ids = prompt + key
    start = cache.last_position + 1
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention weights, for the question only
    try:
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([ids]),
                position_ids=torch.arange(start, start + len(ids)).unsqueeze(0),
                use_cache=True,
                output_attentions=True,
                **cache_kwargs(model, cache.to_dynamic_cache()),
            )
    finally:
        model.set_attn_implementation(previous)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
    at = len(prompt) - 1  # the position that predicts the key's first token
    key_logp = sum(float(logp[at + j, token]) for j, token in enumerate(key))
    cached = cache.token_ids.tolist()
    found = [p for p in range(len(cached) - len(key) + 1) if cached[p : p + len(key)] == key]
    mass = None
    if found:
        span = torch.arange(found[0], found[0] + len(key))
        per_layer = [float(a[0, :, at, span].sum(-1).max()) for a in out.attentions]
        mass = max(per_layer)
    return {
        "key": needle.key,
        "kept": bool(found),
        "logp_key": round(key_logp, 3),
        "p_first": round(float(logp[at, key[0]].exp()), 4),
        "best_head_mass_on_key": None if mass is None else round(mass, 4),
    }


def runs(tokenizer: Any, text: str, sentence: str, run_len: int, total: int) -> str:
    """`total // run_len` runs of `run_len` tokens of `text`, spread evenly, in document order,
    the one nearest the sentence moved to be centred on it."""
    ids, _, middle = locate(tokenizer, text, sentence)
    count = max(1, total // run_len)
    starts = [int(j * (len(ids) - run_len) / max(1, count - 1)) for j in range(count)]
    nearest = min(range(count), key=lambda j: abs(starts[j] - (middle - run_len // 2)))
    starts[nearest] = max(0, middle - run_len // 2)
    return "".join(str(tokenizer.decode(ids[s : s + run_len])) for s in sorted(starts))


@dataclass(frozen=True)
class RandomSignificance(SpanPruning):
    """`SpanPruning` whose significance is noise: what the rule's priors do on their own."""

    seed: int = 0
    _generator: torch.Generator = field(default_factory=torch.Generator, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._generator.manual_seed(self.seed)

    def significance(self, logits: torch.Tensor, *_: Any) -> torch.Tensor:
        return torch.randn(logits.shape[1], generator=self._generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=16000, help="haystack tokens")
    parser.add_argument("--context", choices=["haystack", "excerpt", "runs"], default="haystack")
    parser.add_argument("--run-len", type=int, default=62, help="tokens per run (runs context)")
    parser.add_argument("--run-tokens", type=int, default=4000, help="tokens of all runs")
    parser.add_argument("--chars", type=int, default=12000, help="excerpt size in characters")
    parser.add_argument("--needles", type=int, default=10, help="the first N of 20 needles")
    parser.add_argument("--max-chunk-len", type=int)
    parser.add_argument("--target-len", type=int)
    parser.add_argument("--warmup-layers", type=int)
    parser.add_argument("--run-radius", type=int)
    parser.add_argument("--random-scores", action="store_true")
    parser.add_argument("--name", default="needle_logprob")
    args = parser.parse_args()

    from homer import HomerConfig, compress

    model, tokenizer = load()
    radius = {} if args.run_radius is None else {"run_radius": args.run_radius}
    rule = RandomSignificance(**radius) if args.random_scores else SpanPruning(**radius)
    config = HomerConfig(
        max_chunk_len=args.max_chunk_len,
        target_len=args.target_len,
        warmup_layers=args.warmup_layers,
        pruning=rule,
    )
    if args.context == "runs":
        from homer.adapter import ModelAdapter

        config = HomerConfig(max_chunk_len=ModelAdapter(model).window)  # one exact prefill
    hay = haystack(tokenizer, natural_prose(), args.length)
    rng = random.Random(args.length)  # the needles of `benchmarks.needles` at this length
    needles = [make_needle(rng, i) for i in range(20)]
    depths = [0.05 + 0.9 * i / 19 for i in range(20)]
    rows = []
    for needle, depth in list(zip(needles, depths, strict=True))[: args.needles]:
        text = insert(hay, needle.sentence, depth)
        if args.context == "excerpt":
            text = excerpt(text, needle.sentence, args.chars)
        elif args.context == "runs":
            text = runs(tokenizer, text, needle.sentence, args.run_len, args.run_tokens)
        cache = compress(model, tokenizer, text, config)
        row = score(model, tokenizer, cache, needle) | {
            "depth": round(depth, 3),
            "document_tokens": cache.info.document_tokens,
            "chunks": cache.info.num_chunks,
            "cache_tokens": cache.length,
        }
        rows.append(row)
        print(row, flush=True)
    mean = sum(r["logp_key"] for r in rows) / len(rows)
    summary = {
        "mean_logp_key": round(mean, 3),
        "median_logp_key": round(sorted(r["logp_key"] for r in rows)[len(rows) // 2], 3),
        "kept": sum(r["kept"] for r in rows),
        "needles": len(rows),
    }
    print(summary)
    write_result(args.name, {"args": vars(args), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
