"""Grounded answers: do citations find the needle, does re-reading answer it, is "not in the
document" right?

    python -m benchmarks.grounded --prose mixed --lengths 16000 32000 --name grounded_mixed
    python -m benchmarks.grounded --combine grounded_mixed grounded_clean grounded_bible

The needles are `benchmarks.needles`' own (same seed, depths and sentences), so the plain-model
baselines of its saved runs (`--pair NAME ...`: one-chunk, centred and at depth) answer the very
same needles and are paired here instead of being computed again. For each needle the haystack
with it is compressed with the default settings (query-agnostic), then:

- **citations**: the question, fed after the cache, ranks the document's passages by the
  attention it pays to their kept tokens (`homer.grounding.rank_passages`); a hit is a top-1 /
  top-3 passage overlapping the needle's sentence. `cite` ranks again with the question and
  the default answer, as `homer ask --cite` does. Variants of the aggregation (which layers,
  which of the question's tokens, sum or max over a passage) are recorded beside the default
  on every needle, so the choice can be read off held-out seeds.
- **answers**: homer's default answer and the answer with re-reading (`Grounding(reread=True)`,
  the default budget), 24 new tokens, greedy, scored as `benchmarks.needles` scores them.
- **not in the document**: the question of a fact that is *not* in the haystack (another place
  or role) is ranked too; `strength` of both is recorded, so precision and recall of
  "grounded: false" can be read at any threshold (`--combine` prints them at the default one).
- **cost**: time to first token with and without re-reading, and the text file's size.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import torch

from benchmarks.common import PROSE_KINDS, joined_parts, load, prose_parts, source_at
from benchmarks.needles import (
    Needle,
    answered,
    haystack,
    insert,
    make_needle,
    needle_depths,
    needle_offset,
    run_prose,
    wilson,
)
from benchmarks.report import markdown_table, read_result, show, write_result

NEW_TOKENS = 24


def _variants(
    attentions: list[torch.Tensor], spans: torch.Tensor, bounds: list[tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """Passage scores under each aggregation variant (the first is homer's default)."""
    from homer.evidence import passage_scores, token_evidence

    document = spans[:, 0] >= 0
    half = len(attentions) // 2
    last = [a[:, -1:, :] for a in attentions]
    out = {
        "default": passage_scores(token_evidence(attentions, document), spans, bounds),
        "upper-half": passage_scores(
            token_evidence(attentions, document, slice(half, None)), spans, bounds
        ),
        "lower-half": passage_scores(
            token_evidence(attentions, document, slice(None, half)), spans, bounds
        ),
        "last-token": passage_scores(token_evidence(last, document), spans, bounds),
    }
    evidence = token_evidence(attentions, document)
    starts = torch.tensor([s for s, _ in bounds])
    inside = spans[:, 0] >= 0
    index = torch.bucketize(spans[inside, 0], starts, right=True) - 1
    peak = torch.zeros(len(bounds))
    peak.scatter_reduce_(0, index.clamp(0, len(bounds) - 1), evidence[inside], reduce="amax")
    out["max"] = peak
    return out


def _rank(scores: torch.Tensor, bounds: list[tuple[int, int]], lo: int, hi: int) -> int:
    """1-based rank of the best passage overlapping `[lo, hi)` (0 if none)."""
    order = sorted(range(len(bounds)), key=lambda i: (-float(scores[i]), i))
    for rank, i in enumerate(order, start=1):
        start, end = bounds[i]
        if start < hi and lo < end:
            return rank
    return 0


def absent_needle(rng: random.Random, present: Needle, index: int) -> Needle:
    """A needle of the same kind whose place or role differs from the present one's, so its
    fact is not in the haystack."""
    while True:
        other = make_needle(rng, index)
        if other.question != present.question:
            return other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prose", choices=PROSE_KINDS, default="mixed")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16000])
    parser.add_argument("--needles", type=int, default=20)
    parser.add_argument("--first", type=int, default=0, help="skip the first N needles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-answer", action="store_true", help="citations and strength only")
    parser.add_argument("--name", default="grounded")
    parser.add_argument("--combine", nargs="+", metavar="NAME")
    parser.add_argument(
        "--pair",
        nargs="*",
        default=[],
        metavar="NAME",
        help="saved benchmarks.needles runs whose plain baselines answered the same needles",
    )
    args = parser.parse_args()
    if args.combine:
        show(combined_table([r for n in args.combine for r in read_result(n)["records"]]))
        return

    from homer import HomerConfig, compress, generate
    from homer.adapter import ModelAdapter
    from homer.evidence import split_passages, strength
    from homer.grounding import DocumentView, GroundedStream, Grounding
    from homer.prompts import PromptTemplate, encode
    from homer.tree import SubtreeMemo

    model, tokenizer = load()
    adapter = ModelAdapter(model)
    template = PromptTemplate.for_tokenizer(tokenizer)
    parts = prose_parts(args.prose)
    prose = joined_parts(parts)
    baselines = _paired_baselines(args.pair, args.prose, args.seed)
    records: list[dict[str, Any]] = []

    def attend(cache: Any, fed: str) -> list[torch.Tensor]:
        past = cache.to_dynamic_cache()
        return adapter.attention_after(past, encode(tokenizer, fed), cache.last_position + 1)

    for length in args.lengths:
        hay = haystack(tokenizer, prose, length)
        rng = random.Random(args.seed * 1000 + length)
        needles = [make_needle(rng, i) for i in range(args.needles)]
        absent_rng = random.Random(10_000 + args.seed * 1000 + length)
        depths = needle_depths(args.needles)
        memo = SubtreeMemo(capacity=24)
        for index, (needle, depth) in enumerate(zip(needles, depths, strict=True)):
            absent = absent_needle(absent_rng, needle, index)
            if index < args.first:
                continue
            text = insert(hay, needle.sentence, depth)
            began = time.perf_counter()
            cache = compress(model, tokenizer, text, HomerConfig(), memo=memo)
            compress_s = time.perf_counter() - began
            assert cache.spans is not None
            bounds = split_passages(text)
            lo = text.find(needle.sentence)
            hi = lo + len(needle.sentence)
            record: dict[str, Any] = {
                "prose": args.prose,
                "seed": args.seed,
                "length": length,
                "depth": round(depth, 3),
                "source": source_at(parts, needle_offset(hay, depth)),
                "key": needle.key,
                "passages": len(bounds),
                "compress_s": round(compress_s, 2),
                "survived": needle.key in str(tokenizer.decode(cache.token_ids)),
            }
            fed = template.conversation((), needle.question)
            began = time.perf_counter()
            scores = _variants(attend(cache, fed), cache.spans, bounds)
            record["rank_s"] = round(time.perf_counter() - began, 3)
            record["rank"] = {k: _rank(v, bounds, lo, hi) for k, v in scores.items()}
            record["strength"] = strength(scores["default"])
            absent_scores = _variants(
                attend(cache, template.conversation((), absent.question)), cache.spans, bounds
            )
            record["absent_strength"] = strength(absent_scores["default"])
            if not args.no_answer:
                plain = generate(
                    model, tokenizer, cache, needle.question, max_new_tokens=NEW_TOKENS
                )
                reply = "".join(plain)
                cited = _variants(attend(cache, fed + reply), cache.spans, bounds)
                record["cite_rank"] = _rank(cited["default"], bounds, lo, hi)
                grounded = GroundedStream(
                    model,
                    tokenizer,
                    cache,
                    needle.question,
                    Grounding(reread=True),
                    DocumentView(text),
                    generation={"max_new_tokens": NEW_TOKENS},
                )
                reread = "".join(grounded)
                record |= {
                    "answer": reply,
                    "correct": answered(needle.key, reply),
                    "reread_answer": reread,
                    "reread_correct": answered(needle.key, reread),
                    "reread_has_needle": needle.sentence in grounded.reread,
                    "reread_tokens": len(encode(tokenizer, grounded.reread)),
                    "ttft_s": round(plain.stats.time_to_first_token_s, 3),
                    "reread_ttft_s": round(
                        grounded.stats.time_to_first_token_s + grounded.grounding_seconds, 3
                    ),
                }
            record |= baselines.get((length, round(depth, 3), needle.key), {})
            records.append(record)
            print(
                f"{args.prose:6s} {length:6d} d={depth:.2f} {needle.key!r:16s} "
                f"rank={record['rank']} s={record['strength']:.2f}/{record['absent_strength']:.2f} "
                f"plain={record.get('correct')} reread={record.get('reread_correct')} "
                f"{record.get('reread_answer', '')!r}",
                flush=True,
            )
            write_result(args.name, {"records": records})
    show(combined_table(records))


def _paired_baselines(
    names: list[str], prose: str, seed: int
) -> dict[tuple[int, float, str], dict[str, Any]]:
    """Plain-model answers of saved `benchmarks.needles` runs, by (length, depth, key)."""
    found: dict[tuple[int, float, str], dict[str, Any]] = {}
    for name in names:
        saved = read_result(name)
        if run_prose(saved["environment"]["command"]) != prose:
            continue
        for r in saved["records"]:
            if r["method"] in ("one-chunk", "one-chunk-depth"):
                key = (r["length"], r["depth"], r["key"])
                found.setdefault(key, {})[r["method"]] = bool(r["correct"])
    return found


def combined_table(records: list[dict[str, Any]], threshold: float | None = None) -> str:
    """Hit rates, answer rates and "not in the document" precision/recall per haystack and
    length (95% Wilson intervals)."""
    from homer.grounding import GROUNDED_THRESHOLD

    cut = GROUNDED_THRESHOLD if threshold is None else threshold

    def pct(right: int, total: int) -> str:
        if not total:
            return ""
        lo, hi = wilson(right, total)
        return f"{right}/{total} ({100 * right / total:.0f}%, {100 * lo:.0f}–{100 * hi:.0f})"

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["prose"], r["length"]), []).append(r)
    rows = []
    for (prose, length), rs in sorted(groups.items()):
        n = len(rs)
        answered_rs = [r for r in rs if "correct" in r]
        paired = [r for r in answered_rs if "one-chunk" in r]
        depth_paired = [r for r in answered_rs if "one-chunk-depth" in r]
        flagged_absent = sum(r["absent_strength"] < cut for r in rs)
        flagged_present = sum(r["strength"] < cut for r in rs)
        flagged = flagged_absent + flagged_present
        rows.append(
            [
                f"{prose}, {length // 1000}k",
                pct(sum(0 < r["rank"]["default"] <= 1 for r in rs), n),
                pct(sum(0 < r["rank"]["default"] <= 3 for r in rs), n),
                pct(sum(0 < r.get("cite_rank", 0) <= 3 for r in answered_rs), len(answered_rs)),
                pct(sum(r["correct"] for r in answered_rs), len(answered_rs)),
                pct(sum(r["reread_correct"] for r in answered_rs), len(answered_rs)),
                pct(sum(r["one-chunk"] for r in paired), len(paired)),
                pct(sum(r["one-chunk-depth"] for r in depth_paired), len(depth_paired)),
                pct(flagged_absent, flagged) if flagged else "none flagged",
                pct(flagged_absent, n),
            ]
        )
    headers = [
        "haystack",
        "question cites needle: top-1",
        "top-3",
        "question + answer: top-3",
        "HOMER default answers",
        "with re-reading",
        "plain, one chunk, centred",
        "plain, one chunk, at depth",
        f"'not in document' precision (strength < {cut})",
        "recall",
    ]
    return markdown_table(headers, rows)


if __name__ == "__main__":
    main()
