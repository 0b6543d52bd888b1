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
    one_chunk_tokens,
    run_prose,
    token_excerpt,
    wilson,
)
from benchmarks.report import markdown_table, read_result, show, write_result

NEW_TOKENS = 24


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
    parser.add_argument(
        "--stride",
        type=int,
        default=1,
        help="run every Nth needle from --first (--stride 2: only codes, or with --first 1 only "
        "names, as needles alternate)",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="run one pair of needles (a code and a name, neighbouring depths) in every N pairs "
        "of the --needles grid: the same needles and depths as a full run, so saved baselines "
        "still pair",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-answer", action="store_true", help="citations and strength only")
    parser.add_argument("--name", default="grounded")
    parser.add_argument("--combine", nargs="+", metavar="NAME")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="answer each needle with the plain model too, on the excerpt that fills one chunk "
        "(centred and at its depth), as benchmarks.needles does: for a haystack no saved run "
        "paired",
    )
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
    from homer.evidence import split_passages, strength
    from homer.grounding import (
        BASELINE_QUESTION,
        DocumentView,
        GroundedStream,
        Grounding,
        rank_passages,
    )
    from homer.prompts import PromptTemplate, encode
    from homer.tree import SubtreeMemo

    model, tokenizer = load()
    template = PromptTemplate.for_tokenizer(tokenizer)
    baseline = template.conversation((), BASELINE_QUESTION)
    parts = prose_parts(args.prose)
    prose = joined_parts(parts)
    baselines = _paired_baselines(args.pair, args.prose, args.seed)
    records: list[dict[str, Any]] = []
    chunk_tokens = one_chunk_tokens(model, tokenizer) if args.plain else 0

    for length in args.lengths:
        hay = haystack(tokenizer, prose, length)
        rng = random.Random(args.seed * 1000 + length)
        needles = [make_needle(rng, i) for i in range(args.needles)]
        absent_rng = random.Random(10_000 + args.seed * 1000 + length)
        depths = needle_depths(args.needles)
        memo = SubtreeMemo(capacity=24)
        for index, (needle, depth) in enumerate(zip(needles, depths, strict=True)):
            absent = absent_needle(absent_rng, needle, index)
            skipped = _skipped(index - args.first, args.every) or (index - args.first) % args.stride
            if index < args.first or skipped:
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
            view = DocumentView(text)

            def ranked(fed: str, words: str, cache: Any = cache, view: Any = view) -> Any:
                return rank_passages(
                    model, tokenizer, cache, view, fed, words=words, baseline_text=baseline
                )

            fed = template.conversation((), needle.question)
            began = time.perf_counter()
            found = ranked(fed, needle.question)
            record["rank_s"] = round(time.perf_counter() - began, 3)
            record["rank"] = {k: _rank(v, bounds, lo, hi) for k, v in found.scores.items()}
            record["strength"] = {k: strength(v) for k, v in found.scores.items()}
            missing = ranked(template.conversation((), absent.question), absent.question)
            record["absent_strength"] = {k: strength(v) for k, v in missing.scores.items()}
            if not args.no_answer:
                plain = generate(
                    model, tokenizer, cache, needle.question, max_new_tokens=NEW_TOKENS
                )
                reply = "".join(plain)
                cited = ranked(fed + reply, f"{needle.question} {reply}")
                record["cite_rank"] = {k: _rank(v, bounds, lo, hi) for k, v in cited.scores.items()}
                grounded = GroundedStream(
                    model,
                    tokenizer,
                    cache,
                    needle.question,
                    Grounding(reread=True),
                    view,
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
            if args.plain and not args.no_answer:
                for method, at in (("one-chunk", 0.5), ("one-chunk-depth", depth)):
                    excerpt = token_excerpt(tokenizer, text, needle.sentence, chunk_tokens, at=at)
                    one = compress(model, tokenizer, excerpt, HomerConfig())
                    assert one.info.num_chunks == 1, "a plain baseline must fit one chunk"
                    said = "".join(
                        generate(model, tokenizer, one, needle.question, max_new_tokens=NEW_TOKENS)
                    )
                    record[method] = answered(needle.key, said)
            records.append(record)
            print(
                f"{args.prose:6s} {length:6d} d={depth:.2f} {needle.key!r:16s} "
                f"rank={record['rank']} s={_short(record['strength'])}/"
                f"{_short(record['absent_strength'])} "
                f"plain={record.get('correct')} reread={record.get('reread_correct')} "
                f"{record.get('reread_answer', '')!r}",
                flush=True,
            )
            write_result(args.name, {"records": records})
    show(combined_table(records))


def _skipped(index: int, every: int) -> bool:
    """Whether needle `index` falls outside a run of one pair in every `every` pairs (needles
    alternate codes and names, so pairs keep both kinds)."""
    return (index // 2) % every != 0


def _short(values: dict[str, float]) -> str:
    return ",".join(f"{v:.1f}" for v in values.values())


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
    """Per haystack and length: how often the needle's passage is the top-1 / top-3 passage
    under each ranking, answer rates with and without re-reading against the paired plain
    baselines, and "not in the document" precision and recall (95% Wilson intervals)."""
    from homer.grounding import GROUNDED_THRESHOLD

    cut = GROUNDED_THRESHOLD if threshold is None else threshold

    def pct(right: int, total: int) -> str:
        if not total:
            return ""
        lo, hi = wilson(right, total)
        return f"{right}/{total} ({100 * right / total:.0f}%, {100 * lo:.0f}–{100 * hi:.0f})"

    def hits(rs: list[dict[str, Any]], field: str, method: str, k: int) -> str:
        return pct(sum(0 < r[field][method] <= k for r in rs), len(rs))

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["prose"], r["length"]), []).append(r)
    citing, answering = [], []
    for (prose, length), rs in sorted(groups.items()):
        label = f"{prose}, {length // 1000}k"
        answered_rs = [r for r in rs if "correct" in r]
        citing.append(
            [
                label,
                hits(rs, "rank", "fused", 1),
                hits(rs, "rank", "fused", 3),
                hits(rs, "rank", "attention", 3),
                hits(rs, "rank", "lexical", 3),
                hits(answered_rs, "cite_rank", "fused", 3) if answered_rs else "",
            ]
        )
        absent = sum(r["absent_strength"]["lexical"] < cut for r in rs)
        present = sum(r["strength"]["lexical"] < cut for r in rs)
        paired = [r for r in answered_rs if "one-chunk" in r]
        at_depth = [r for r in answered_rs if "one-chunk-depth" in r]
        answering.append(
            [
                label,
                pct(sum(r["correct"] for r in answered_rs), len(answered_rs)),
                pct(sum(r["reread_correct"] for r in answered_rs), len(answered_rs)),
                pct(sum(r["one-chunk"] for r in paired), len(paired)),
                pct(sum(r["one-chunk-depth"] for r in at_depth), len(at_depth)),
                pct(absent, absent + present) if absent + present else "none flagged",
                pct(absent, len(rs)),
            ]
        )
    first = markdown_table(
        [
            "haystack",
            "question cites the needle: top-1 (fused)",
            "top-3 (fused)",
            "top-3 (attention alone)",
            "top-3 (words alone)",
            "question + answer: top-3 (fused)",
        ],
        citing,
    )
    second = markdown_table(
        [
            "haystack",
            "HOMER, default",
            "HOMER + re-reading",
            "plain, one chunk, centred",
            "plain, one chunk, at depth",
            f"'not in the document' precision (evidence < {cut})",
            "recall",
        ],
        answering,
    )
    return first + "\n\n" + second


if __name__ == "__main__":
    main()
