"""Do facts survive compression? Needles in natural prose, under each token-reduction rule.

    python -m benchmarks.needles --lengths 16000 32000 --needles 20

A needle is one sentence stating a fact (a 5-digit code or an invented two-word name) inserted
once, at a sentence boundary, at spread depths into public-domain prose (see `natural_prose`).
For every rule, each haystack is compressed query-agnostically with default settings and we
record whether the key span (the code or the name) survives intact in the cache, and whether
`homer.generate` answers the question. The in-window baseline answers the same needle from a
~3k-token excerpt around it (one chunk: an exact plain prefill). A needle-free run per rule gives
the histogram of kept-token positions within a chunk.

`--baselines one-chunk` adds the plain model on the excerpt that fills exactly one chunk: as
many document tokens as HOMER's final cache holds, the issue's "inside its window (one chunk)".
The needle sits in the middle of it. `one-chunk-depth` is the same excerpt with the needle at
the same relative depth as in the whole document (at 5% of the excerpt when it sits at 5% of
the haystack), as it sits in HOMER's cache, whose kept tokens keep document order.
`--baselines full-window homer-full-window` add two arms on a window-filling excerpt (about 7k
tokens around the needle): the plain model reading it in its whole native window (one exact
prefill), and HOMER's default on the very same text. They separate what compression loses from
what the model loses by reading more text at once.

`--seed N` draws another needle set (codes, names and places; the depths stay the same).
`--prose clean` uses Milton's Areopagitica alone instead of the OCR'd Britannica article followed
by Milton (about 24k tokens, so lengths up to 16k or so); `--prose bible` uses 1 and 2 Samuel in
the King James Version (clean narrative prose dense in names, about 60k tokens).
`--combine NAME ...` pools saved runs: answer rates with 95% Wilson intervals, and each rule
against each baseline on the same needles; `--by-source` splits each length by the text a needle
sits in (in the mixed haystack: the OCR'd article or Milton). Records carry that `source`; for
runs saved before it, the haystack is rebuilt from the run's command line to place the needles
again.

Rules (`--methods`): any variant in `benchmarks.variants` (the library default with a few
fields changed), or one of the two attribution rules at the end of this list:
- `paper`: the paper's rule: single tokens, bias calibrated on plain text.
- `default`: homer's default: whole words, bias calibrated in the compression prompt's layout.
- `no-rarity`: the default without the in-document rarity prior (`rare_word_boost=0`).
- `no-runs`: the default without runs (`run_radius=0`; session 5's default).
- `no-keep-facts`: the default without reserving facts before runs (`keep_facts=False`;
  session 6's default).
- `paper-positions`: the default with the final cache keeping the positions the merges left
  (`positions="paper"`) instead of consecutive ones.
- `shared`: the default with siblings sharing their merged node's room by one ranking of
  both (`sibling_budget="shared"`) instead of keeping half each, as in the paper.
- `tokens+template`, `spans+plain`: one change at a time, for attribution.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import (
    PROSE_KINDS,
    joined_parts,
    load,
    load_tokenizer,
    prose_parts,
    source_at,
)
from benchmarks.report import (
    markdown_table,
    pyplot,
    rate,
    read_result,
    result_path,
    save_figure,
    show,
    write_json,
    write_result,
)
from benchmarks.variants import homer_config, variant

PLACES = ["harbour", "observatory", "granary", "chapel", "armoury", "library", "mill", "tower"]
ROLES = ["navigator", "cartographer", "surgeon", "quartermaster", "botanist", "chronicler"]
FIRST = ["Orlan", "Tamsin", "Bexley", "Corvin", "Ysolde", "Marrick", "Fenna", "Ludo", "Isbet"]
LAST = ["Vesk", "Quarrow", "Halbeck", "Strand", "Morrow", "Tallis", "Venner", "Ashgrove"]


@dataclass(frozen=True)
class Needle:
    sentence: str
    question: str
    key: str


def make_needle(rng: random.Random, index: int) -> Needle:
    """Alternating code and name facts; codes are 5 digits, names invented."""
    if index % 2 == 0:
        place, code = rng.choice(PLACES), rng.randint(10000, 99999)
        return Needle(
            f"The combination of the {place} safe is {code}.",
            f"What is the combination of the {place} safe?",
            str(code),
        )
    role, name = rng.choice(ROLES), f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    return Needle(
        f"The {role} of the expedition was called {name}.",
        f"What was the {role} of the expedition called?",
        name,
    )


def haystack(tokenizer: Any, prose: str, length: int) -> str:
    """The first `length` tokens of `prose`, cut back to the last sentence end."""
    ids = tokenizer(prose, add_special_tokens=False)["input_ids"][:length]
    text = str(tokenizer.decode(ids))
    return text[: text.rfind(". ") + 1]


def answered(key: str, reply: str) -> bool:
    """Whether `reply` states `key` as a whole: "749899" does not answer 74989, nor "Orlan
    Vennerson" Orlan Venner."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(key)}(?![0-9A-Za-z])", reply) is not None


def needle_offset(hay: str, depth: float) -> int:
    """Where `insert` puts a needle at `depth`: just after the first sentence end from there."""
    return hay.find(". ", int(len(hay) * depth)) + 1 or len(hay)


def insert(hay: str, sentence: str, depth: float) -> str:
    """`sentence` after the sentence end nearest to `depth` of the text."""
    cut = needle_offset(hay, depth)
    return hay[:cut] + " " + sentence + hay[cut:]


def needle_depths(count: int) -> list[float]:
    """`count` depths spread evenly from 5% to 95% of the haystack."""
    return [0.05 + 0.9 * i / max(1, count - 1) for i in range(count)]


#: Baselines in which the plain model reads an excerpt in one exact prefill (no pruning).
PLAIN_BASELINES = ("in-window", "one-chunk", "one-chunk-depth", "full-window")

#: Characters of the window-filling excerpt: about 7k tokens of this prose, which with the prompt
#: fits the embedded model's 8,192-token window.
FULL_WINDOW_CHARS = 28000


def excerpt(text: str, sentence: str, chars: int = 12000) -> str:
    """About `chars / 4` tokens of `text` around `sentence` (3k by default: one chunk)."""
    at = text.find(sentence)
    start = max(0, at - chars // 2)
    return text[start : start + chars]


def locate(tokenizer: Any, text: str, sentence: str) -> tuple[list[int], list[Any], int]:
    """`text`'s token ids, their character offsets, and the index of the sentence's first token."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    at = text.find(sentence)
    return encoded["input_ids"], offsets, next(i for i, (a, _) in enumerate(offsets) if a >= at)


def token_excerpt(tokenizer: Any, text: str, sentence: str, tokens: int, at: float = 0.5) -> str:
    """The longest run of whole tokens of `text` around `sentence` that is at most `tokens`
    tokens long when tokenized again, with the sentence at fraction `at` of it (centred by
    default) where the text allows."""
    _, offsets, middle = locate(tokenizer, text, sentence)
    budget = tokens
    while True:
        first = max(0, min(middle - int(budget * at), len(offsets) - budget))
        last = min(len(offsets), first + budget)
        piece = text[offsets[first][0] : offsets[last - 1][1]]
        if len(tokenizer(piece, add_special_tokens=False)["input_ids"]) <= tokens:
            return piece
        budget -= 8  # re-tokenizing the cut edges may add a token or two


def one_chunk_tokens(model: Any, tokenizer: Any) -> int:
    """Document tokens in one chunk: the chunk less the prompt around it (HOMER's final cache
    holds exactly as many), the size of the one-chunk baselines."""
    from homer import HomerConfig, compress
    from homer.adapter import ModelAdapter

    adapter = ModelAdapter(model)
    affixes = compress(model, tokenizer, "x", HomerConfig()).info
    chunk = HomerConfig().resolve(num_layers=adapter.num_layers, window=adapter.window)
    return chunk.max_chunk_len - affixes.prefix_tokens - affixes.suffix_tokens


def rule(name: str, model: Any, tokenizer: Any) -> tuple[Any, Any, Any]:
    """(HomerConfig, Ablations, Calibration or None) for a reduction rule: a variant of
    `benchmarks.variants`, or one of two attribution rules with their own calibration."""
    from homer import HomerConfig, calibrate
    from homer.config import Ablations
    from homer.pruning import PaperPruning

    if name == "tokens+template":
        config = HomerConfig(pruning=PaperPruning())
        return config, Ablations(), calibrate(model, tokenizer, config, mode="template")
    if name == "spans+plain":
        config = HomerConfig()
        return config, Ablations(), calibrate(model, tokenizer, config, mode="plain")
    return homer_config(name), variant(name).ablations, None


def kept_position_histogram(cache: Any, bins: int = 20) -> list[float]:
    """Share of a chunk's document tokens kept, by relative position within the chunk.

    `cache` must keep its leaves' positions (`Ablations(compact_positions=False)`)."""
    info = cache.info
    leaf_len = -(-info.document_tokens // info.num_chunks)  # ceil
    positions = cache.positions[info.prefix_tokens : cache.length - info.suffix_tokens]
    relative = ((positions - info.prefix_tokens).float() / leaf_len).clamp(0, 0.999)
    counts = torch.bincount((relative * bins).long(), minlength=bins).float()
    per_bin = info.document_tokens / bins  # document tokens that fall in each bin, all chunks
    return (counts / per_bin).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16000, 32000])
    parser.add_argument("--needles", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=["paper", "default"])
    parser.add_argument("--no-answer", action="store_true", help="survival only, no generation")
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["in-window"],
        choices=[*PLAIN_BASELINES, "homer-full-window"],
        help="in-window: a 3k excerpt in one chunk; one-chunk: the excerpt that fills exactly one "
        "chunk (as many document tokens as HOMER's final cache), plain, the needle in its middle; "
        "one-chunk-depth: the same with the needle at its depth in the document; full-window: a "
        "~7k excerpt read by the plain model in its whole window; homer-full-window: HOMER's "
        "default on that same excerpt",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prose",
        choices=PROSE_KINDS,
        default="mixed",
        help="mixed: the OCR'd Britannica article, then Milton (the default haystack); clean: "
        "Milton's Areopagitica alone (about 24k tokens); bible: 1 and 2 Samuel, King James "
        "Version (about 60k tokens)",
    )
    parser.add_argument("--name", default="needles")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score the saved answers of results/<name>.json (or results/archive/<name>.json) "
        "again (whole key only) and exit",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="NAME",
        help="pool the saved runs results/<NAME>.json (say, one per seed; archived runs are "
        "found in results/archive/): answer rates with 95%% intervals, and each rule against "
        "each baseline on the same needles; then exit",
    )
    parser.add_argument(
        "--by-source",
        action="store_true",
        help="with --combine: split each length by the text the needle sits in (the OCR'd "
        "article or Milton in the mixed haystack)",
    )
    args = parser.parse_args()
    if args.rescore:
        print(rescore(args.name))
        return
    if args.combine:
        pooled: list[dict[str, Any]] = []
        tokenizer = None
        for run in args.combine:
            saved = read_result(run)
            prose = run_prose(saved["environment"]["command"])
            records = [r | {"prose": prose} for r in needle_sets(saved["records"])]
            if args.by_source and any("source" not in r for r in records):
                tokenizer = tokenizer or load_tokenizer()
                tag_sources(records, prose_parts(prose), tokenizer)
            pooled += records
        print(pooled_table(pooled, by_source=args.by_source))
        return

    from homer import compress, generate
    from homer.tree import SubtreeMemo

    model, tokenizer = load()
    parts = prose_parts(args.prose)
    prose = joined_parts(parts)
    records: list[dict[str, Any]] = []
    histograms: dict[str, list[float]] = {}

    def answer(cache: Any, needle: Needle) -> str:
        return "".join(generate(model, tokenizer, cache, needle.question, max_new_tokens=24))

    def save(extra: dict[str, Any] | None = None) -> None:
        write_result(args.name, {"records": records, "histograms": histograms} | (extra or {}))

    from homer import HomerConfig
    from homer.adapter import ModelAdapter

    adapter = ModelAdapter(model)
    window = adapter.window

    chunk_tokens = (
        one_chunk_tokens(model, tokenizer)
        if {"one-chunk", "one-chunk-depth"} & set(args.baselines)
        else 0
    )

    def run_baseline(
        baseline: str, length: int, hay: str, needles: list[Needle], depths: list[float]
    ) -> None:
        if baseline in ("in-window", "one-chunk", "one-chunk-depth"):
            chars, config = 12000, HomerConfig()  # one-chunk cuts by tokens, not chars
        elif baseline == "full-window":
            chars, config = FULL_WINDOW_CHARS, HomerConfig(max_chunk_len=window)
        else:
            chars, config = FULL_WINDOW_CHARS, HomerConfig()
        for needle, depth in zip(needles, depths, strict=True):
            full = insert(hay, needle.sentence, depth)
            if baseline == "one-chunk":
                text = token_excerpt(tokenizer, full, needle.sentence, chunk_tokens)
            elif baseline == "one-chunk-depth":
                text = token_excerpt(tokenizer, full, needle.sentence, chunk_tokens, at=depth)
            else:
                text = excerpt(full, needle.sentence, chars)
            cache = compress(model, tokenizer, text, config)
            if baseline != "homer-full-window":
                assert cache.info.num_chunks == 1, "a plain baseline must fit one chunk"
            reply = answer(cache, needle)
            records.append(
                {
                    "method": baseline,
                    "length": length,
                    "depth": round(depth, 3),
                    "source": source_at(parts, needle_offset(hay, depth)),
                    "key": needle.key,
                    "survived": needle.key in str(tokenizer.decode(cache.token_ids)),
                    "answer": reply,
                    "correct": answered(needle.key, reply),
                    "document_tokens": cache.info.document_tokens,
                }
            )
            print(f"{baseline:16s} {length:6d} d={depth:.2f} {needle.key!r:16s} {reply!r}")
            save()

    for length in args.lengths:
        hay = haystack(tokenizer, prose, length)
        rng = random.Random(args.seed * 1000 + length)
        needles = [make_needle(rng, i) for i in range(args.needles)]
        depths = needle_depths(args.needles)
        for name in args.methods:
            config, ablations, calibration = rule(name, model, tokenizer)
            memo = SubtreeMemo(capacity=24)
            for needle, depth in zip(needles, depths, strict=True):
                text = insert(hay, needle.sentence, depth)
                began = time.perf_counter()
                cache = compress(
                    model,
                    tokenizer,
                    text,
                    config,
                    calibration=calibration,
                    memo=memo,
                    ablations=ablations,
                )
                seconds = time.perf_counter() - began
                kept_text = str(tokenizer.decode(cache.token_ids))
                survived = needle.key in kept_text
                reply = None if args.no_answer else answer(cache, needle)
                records.append(
                    {
                        "method": name,
                        "length": length,
                        "depth": round(depth, 3),
                        "source": source_at(parts, needle_offset(hay, depth)),
                        "key": needle.key,
                        "survived": survived,
                        "sentence_kept": needle.sentence in kept_text,
                        "answer": reply,
                        "correct": None if reply is None else answered(needle.key, reply),
                        "compress_s": round(seconds, 2),
                    }
                )
                print(
                    f"{name:16s} {length:6d} d={depth:.2f} {needle.key!r:16s} "
                    f"kept={survived!s:5s} {seconds:5.1f}s {reply!r}",
                    flush=True,
                )
                save()
            if length == max(args.lengths):
                # Leaf-relative positions: the same tokens as the default cache, before the
                # final cache is renumbered 0..T-1 (which would hide where in a chunk they sat).
                leafwise = dataclasses.replace(ablations, compact_positions=False)
                cache = compress(
                    model, tokenizer, hay, config, calibration=calibration, ablations=leafwise
                )
                histograms[name] = kept_position_histogram(cache)
        if not args.no_answer:
            for baseline in args.baselines:
                run_baseline(baseline, length, hay, needles, depths)

    methods = [*args.methods, *([] if args.no_answer else args.baselines)]
    table = summary_table(records, methods, args.lengths)
    image = plot_histograms(histograms, max(args.lengths), args.name) if histograms else None
    save({"table": table, "histogram_png": image})
    show(table)


def summary_table(records: list[dict[str, Any]], methods: list[str], lengths: list[int]) -> str:
    """The markdown table of key survival, whole sentences kept and right answers per rule."""
    rows = []
    for name in methods:
        for length in lengths:
            subset = [r for r in records if r["method"] == name and r["length"] == length]
            if not subset:
                continue
            kept = sum(r["survived"] for r in subset)
            sentences = [r["sentence_kept"] for r in subset if "sentence_kept" in r]
            right = [r["correct"] for r in subset if r["correct"] is not None]
            rows.append(
                [
                    name,
                    f"{length // 1000}k",
                    rate(kept, len(subset)),
                    f"{sum(sentences)}/{len(sentences)}" if sentences else "-",
                    rate(sum(right), len(right)) if right else "-",
                ]
            )
    return markdown_table(
        ["rule", "length", "key span intact", "whole sentence kept", "answer right"], rows
    )


def wilson(right: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a rate of `right` out of `total`."""
    if total == 0:
        return 0.0, 1.0
    rate = right / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = (
        z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def needle_sets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` of one run, each tagged with its needle set: the keys of that length's needles in
    order, which one seed fixes, so runs of the same seed pair up in `pooled_table` and runs of
    different seeds never do (the same key can recur at the same depth under another seed)."""
    sets: dict[int, str] = {}
    for length in dict.fromkeys(r["length"] for r in records):
        first = next(r["method"] for r in records if r["length"] == length)
        keys = [r["key"] for r in records if r["length"] == length and r["method"] == first]
        sets[length] = "/".join(keys)
    return [r | {"needles": sets[r["length"]]} for r in records]


def pooled_table(records: list[dict[str, Any]], by_source: bool = False) -> str:
    """Answer rates of several runs pooled per rule and length, with 95% Wilson intervals, and
    every rule against every plain baseline and every other rule on the very same needles (a
    needle is its haystack (a record's `prose`), length, needle set (`needle_sets`), depth and
    key, so a baseline saved in another run of the same seed and haystack pairs too, and the same
    seed's needles in two haystacks stay apart): how often only one of the two was right.

    With `by_source`, each length is split further by the text a needle sits in (a record's
    `source`, say the article or Milton in the mixed haystack), and rules pair within it."""
    by_rule: dict[tuple[str, int, str], dict[tuple[Any, ...], bool]] = {}
    for r in records:
        if r.get("correct") is not None:
            needle = (r.get("prose"), r.get("needles"), r["depth"], r["key"])
            group = str(r.get("source", "?")) if by_source else ""
            by_rule.setdefault((r["method"], r["length"], group), {})[needle] = bool(r["correct"])
    methods = list(dict.fromkeys(method for method, _, _ in by_rule))
    cells = list(dict.fromkeys((length, group) for _, length, group in by_rule))
    rows = []
    for length, group in cells:
        for name in methods:
            mine = by_rule.get((name, length, group))
            if not mine:
                continue
            right = sum(mine.values())
            low, high = wilson(right, len(mine))
            versus = []
            if name not in PLAIN_BASELINES:
                for other in methods:
                    theirs = by_rule.get((other, length, group), {})
                    both = mine.keys() & theirs.keys()
                    if other != name and both:
                        only_mine = sum(mine[k] and not theirs[k] for k in both)
                        only_theirs = sum(theirs[k] and not mine[k] for k in both)
                        versus.append(f"{other}: {only_mine} vs {only_theirs} of {len(both)}")
            rows.append(
                [
                    name,
                    f"{length // 1000}k" + (f", {group}" if group else ""),
                    rate(right, len(mine)),
                    f"{low:.0%}-{high:.0%}",
                    "; ".join(versus) or "-",
                ]
            )
    return markdown_table(
        ["rule", "length", "answer right", "95% interval", "only this right vs only the other"],
        rows,
    )


def run_prose(command: str) -> str:
    """The `--prose` kind a saved run's command line used (`mixed` when it named none)."""
    words = command.split()
    return words[words.index("--prose") + 1] if "--prose" in words else "mixed"


def tag_sources(
    records: list[dict[str, Any]], parts: list[tuple[str, str]], tokenizer: Any
) -> None:
    """Give each record of one run a `source` (which text of the haystack its needle sits in),
    where the run predates the field: the haystack is rebuilt and the needle placed again at
    its depth, as `main` placed it (the saved depths are rounded; the exact ones are recovered
    from the number of needles per length). `parts` are the run's `prose_parts`."""
    text = joined_parts(parts)
    for length in dict.fromkeys(r["length"] for r in records):
        rows = [r for r in records if r["length"] == length and "source" not in r]
        if not rows:
            continue
        hay = haystack(tokenizer, text, length)
        first = rows[0]["method"]
        count = sum(r["method"] == first for r in records if r["length"] == length)
        exact = {round(d, 3): d for d in needle_depths(count)}
        for r in rows:
            r["source"] = source_at(parts, needle_offset(hay, exact[r["depth"]]))


def rescore(name: str) -> str:
    """Score the answers saved in `benchmarks/results/<name>.json` (or in its `archive/`) again
    with `answered` (runs before session 7 counted any reply containing the key, so "749899"
    answered 74989), rewrite its table where it lies and return it."""
    path = result_path(name)
    data = json.loads(path.read_text())
    records = data["records"]
    for record in records:
        if record.get("answer") is not None:
            record["correct"] = answered(record["key"], record["answer"])
    methods = list(dict.fromkeys(r["method"] for r in records))
    lengths = list(dict.fromkeys(r["length"] for r in records))
    data["table"] = summary_table(records, methods, lengths)
    data["rescored"] = "answers scored with benchmarks.needles.answered (whole key only)"
    write_json(name, data, folder=path.parent)
    return str(data["table"])


def plot_histograms(histograms: dict[str, list[float]], length: int, name: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for method, shares in histograms.items():
        bins = len(shares)
        ax.plot([(i + 0.5) / bins for i in range(bins)], shares, marker="o", label=method)
    ax.set_xlabel("relative position of a document token within its chunk")
    ax.set_ylabel("share kept")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Where kept tokens come from ({length // 1000}k tokens of prose)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, f"{name}_kept_positions.png")


if __name__ == "__main__":
    main()
