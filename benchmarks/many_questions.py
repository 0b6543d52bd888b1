"""Many questions on one cache: invented facts in long public-domain prose, all asked of one cache.

    python -m benchmarks.many_questions --tokens 16384 --facts 24 --aware-limit 8

A seeded generator writes `--facts` short facts about invented people and things ("Captain Vell's
ship is called the Marigold.", "The archivist's locker number is 48213."), each with a distinct
key (a number or an invented name) and one direct question, and inserts each once, as its own
paragraph, at evenly spread depths between paragraphs of Milton's *Areopagitica* (public domain;
continued with *Paradise Lost* when more tokens are asked for). Methods:

- `homer`: ONE query-agnostic HOMER cache of the document (`homer.compress(model, tok, doc)`,
  default settings), every question answered from it with `homer.generate(..., max_new_tokens=24)`.
  For every fact, the run also records whether its key (and its whole sentence) survives in the
  cache's kept tokens.
- `homer-aware`: a query-aware HOMER cache per question (`focus=question`), then the same
  `generate` call. The slowest method on CPU, so `--aware-limit` asks only that many of the
  questions (evenly spread over the document's depth); the table says how many.
- `truncated`: the plain model on homer's own prompt (instruction, document, end marker,
  question) with the document cut to its tail so that the prompt and answer fit the model's
  window. The instruction and document tail are prefilled once and their kv-cache copied for each
  question, as a careful server would; greedy decoding of 24 tokens.

An answer is right when the fact's key appears in it (case-insensitive). Times are wall-clock
seconds on this machine, including HOMER's compression (the agnostic cache once, the aware cache
per question) and the truncated baseline's single prefill.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks.books import areopagitica_paragraphs, paradise_lost
from benchmarks.common import load
from benchmarks.report import markdown_table, pyplot, save_figure, show, write_result

MAX_NEW = 24

FIRST = ["Vell", "Orrin", "Tamsa", "Quill", "Bexley", "Ysolde", "Marek", "Odalys", "Feron"]
FIRST += ["Calloway", "Perrin", "Idony", "Lusk", "Sabeth", "Varro", "Nettle", "Ambrin", "Corvel"]
NAMES = ["Marigold", "Halcyon", "Brightwater", "Thistledown", "Amberlyn", "Corvina", "Saltmere"]
NAMES += ["Wrenfield", "Oakhollow", "Starling", "Dunmore", "Kestrel", "Blackmoor", "Lindqvist"]
NAMES += ["Pellucid", "Tarragon", "Quenby", "Rosmerta", "Galloway", "Fenwick", "Ashgrove"]
ROLES = ["archivist", "ferryman", "apothecary", "bell-ringer", "cartographer", "glassblower"]
ROLES += ["beekeeper", "lamplighter", "stonemason", "clockmaker", "bookbinder", "falconer"]
ROLES += ["harpist", "saddler", "cooper", "chandler", "tanner", "weaver", "locksmith", "vintner"]

# (statement, question, key kind): {who} a role or person, {key} the answer.
TEMPLATES = [
    ("The {role}'s locker number is {key}.", "What is the {role}'s locker number?", "num5"),
    ("Captain {who}'s ship is called the {key}.", "What is Captain {who}'s ship called?", "name"),
    (
        "The {role} was born in the village of {key}.",
        "In which village was the {role} born?",
        "name",
    ),
    (
        "The code that opens the {role}'s safe is {key}.",
        "What code opens the {role}'s safe?",
        "num4",
    ),
    ("{who} keeps a tame raven named {key}.", "What is the name of {who}'s raven?", "name"),
    (
        "The {role} lives at number {key} on Fisher Lane.",
        "At what number on Fisher Lane does the {role} live?",
        "num3",
    ),
    ("Doctor {who}'s horse is called {key}.", "What is Doctor {who}'s horse called?", "name"),
    ("The {role}'s telephone number is {key}.", "What is the {role}'s telephone number?", "num5"),
]


@dataclass(frozen=True)
class Fact:
    statement: str
    question: str
    key: str
    paragraph: int  # inserted before this paragraph of the filler
    token_offset: int = -1  # first token of the statement in the document


def make_facts(count: int, seed: int) -> list[tuple[str, str, str]]:
    """`count` (statement, question, key) triples with distinct subjects and keys."""
    rng = random.Random(seed)
    roles, people = rng.sample(ROLES, len(ROLES)), rng.sample(FIRST, len(FIRST))
    names = rng.sample(NAMES, len(NAMES))
    used: set[str] = set()
    out = []
    for i in range(count):
        statement, question, kind = TEMPLATES[i % len(TEMPLATES)]
        if not (roles and people and names):
            raise ValueError(f"the invented-name pools hold enough for about 30 facts, not {count}")
        if kind == "name":
            key = names.pop()
        else:
            digits = int(kind[-1])
            key = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
            while key in used:
                key = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        used.add(key)
        subject = {"role": roles.pop() if "{role}" in statement else "", "who": ""}
        if "{who}" in statement:
            subject["who"] = people.pop()
        out.append((statement.format(key=key, **subject), question.format(**subject), key))
    return out


def filler_paragraphs() -> list[str]:
    """Areopagitica's prose paragraphs, then Paradise Lost's verse paragraphs (line breaks kept)."""
    verse = [p.strip() for p in paradise_lost().split("\n\n") if len(p.strip()) > 80]
    return areopagitica_paragraphs() + verse


def build_document(tokenizer: Any, tokens: int, count: int, seed: int) -> tuple[str, list[Fact]]:
    """About `tokens` tokens of prose with `count` facts at evenly spread depths."""
    paragraphs, total = [], 0
    for para in filler_paragraphs():
        if total >= tokens:
            break
        paragraphs.append(para)
        total += len(tokenizer(para + "\n\n", add_special_tokens=False)["input_ids"])
    if total < tokens:
        raise ValueError(f"only {total} tokens of filler text; ask for fewer --tokens")
    triples = make_facts(count, seed)
    spots = [round((i + 0.5) * len(paragraphs) / count) for i in range(count)]
    facts = [Fact(s, q, k, at) for (s, q, k), at in zip(triples, spots, strict=True)]
    pieces: list[str] = []
    for i, para in enumerate(paragraphs):
        pieces += [f.statement for f in facts if f.paragraph == i]
        pieces.append(para)
    doc = "\n\n".join(pieces)
    located = []
    for fact in facts:
        before = doc[: doc.index(fact.statement)]
        offset = len(tokenizer(before, add_special_tokens=False)["input_ids"])
        located.append(Fact(**{**asdict(fact), "token_offset": offset}))
    return doc, located


def correct(answer: str, key: str) -> bool:
    return key.lower() in answer.lower()


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list) else {eos}
    return {int(i) for i in ids if i is not None}


@torch.inference_mode()
def greedy_after(model: Any, past: Any, start: int, ids: list[int], stops: set[int]) -> list[int]:
    """Greedy tokens after feeding `ids` at positions `start, ...` on top of `past` (mutated)."""
    from homer.adapter import cache_kwargs

    out: list[int] = []
    position = start
    inputs = ids
    for _ in range(MAX_NEW):
        positions = torch.arange(position, position + len(inputs)).unsqueeze(0)
        res = model(
            input_ids=torch.tensor([inputs]),
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(model, past),
            logits_to_keep=1,
        )
        position += len(inputs)
        token = int(res.logits[0, -1].argmax())
        if token in stops:
            break
        out.append(token)
        inputs = [token]
    return out


def run_truncated(
    model: Any, tokenizer: Any, doc: str, facts: list[Fact]
) -> tuple[list[dict[str, Any]], float, int]:
    """Answers of the plain model on homer's prompt with the document cut to its tail; returns
    the records, the shared prefill's seconds and the first kept document token."""
    from homer.adapter import output_cache
    from homer.prompts import PromptTemplate, encode

    template = PromptTemplate.for_tokenizer(tokenizer)
    head = encode(tokenizer, template.prefix())
    if template.add_bos:
        head = [tokenizer.bos_token_id, *head]
    tail = encode(tokenizer, template.suffix())
    doc_ids = encode(tokenizer, doc)
    asks = [encode(tokenizer, template.continuation(f.question)) for f in facts]
    window = int(model.config.max_position_embeddings)
    budget = window - len(head) - len(tail) - max(len(a) for a in asks) - MAX_NEW
    first = max(0, len(doc_ids) - budget)
    shared = head + doc_ids[first:] + tail
    began = time.perf_counter()
    with torch.inference_mode():
        past = model(input_ids=torch.tensor([shared]), use_cache=True, logits_to_keep=1)
    prefill_s = time.perf_counter() - began
    stops = stop_ids(model, tokenizer)
    records = []
    for fact, ask in zip(facts, asks, strict=True):
        began = time.perf_counter()
        answer_ids = greedy_after(model, copy.deepcopy(output_cache(past)), len(shared), ask, stops)
        answer = str(tokenizer.decode(answer_ids, skip_special_tokens=True))
        records.append(
            {
                "method": "truncated",
                "key": fact.key,
                "answer": answer,
                "correct": correct(answer, fact.key),
                "in_window": fact.token_offset >= first,
                "seconds": round(time.perf_counter() - began, 2),
            }
        )
    return records, prefill_s, first


def ask(model: Any, tokenizer: Any, cache: Any, question: str) -> str:
    from homer import generate

    return "".join(generate(model, tokenizer, cache, question, max_new_tokens=MAX_NEW))


def plot(facts: list[Fact], records: list[dict[str, Any]], methods: list[str], name: str) -> str:
    """Right/wrong per fact against its depth in the document, one row per method."""
    plt = pyplot()
    depth = {f.key: f.token_offset for f in facts}
    fig, ax = plt.subplots(figsize=(7.0, 0.6 + 0.55 * (len(methods) + 1)))
    rows = [*methods, "key kept (homer)"]
    for y, method in enumerate(rows):
        if method == "key kept (homer)":
            hits = [(depth[r["key"]], r["key_in_cache"]) for r in records if r["method"] == "homer"]
        else:
            hits = [(depth[r["key"]], r["correct"]) for r in records if r["method"] == method]
        for x, ok in hits:
            ax.scatter(x, y, marker="o" if ok else "x", color="tab:green" if ok else "tab:red")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("token offset of the fact in the document (o right / kept, x wrong / lost)")
    ax.set_ylim(-0.5, len(rows) - 0.5)
    ax.set_title("Many questions on one cache (SmolLM2-135M)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, f"{name}.png")


def notes(method: str, info: dict[str, Any], facts: int) -> str:
    if method == "homer":
        return f"one {info['compress_s']} s compression; {info['keys_kept']}/{facts} keys kept"
    if method == "homer-aware":
        return f"{info['asked']} of {facts} questions asked, one compression each"
    return f"one {info['prefill_s']} s prefill; {info['facts_in_window']}/{facts} facts in window"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="document length (about)")
    parser.add_argument("--facts", type=int, default=24)
    parser.add_argument(
        "--aware-limit", type=int, default=None, help="ask only this many questions query-aware"
    )
    parser.add_argument("--methods", nargs="+", default=["homer", "homer-aware", "truncated"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="many_questions")
    args = parser.parse_args()

    from homer import compress

    model, tokenizer = load()
    doc, facts = build_document(tokenizer, args.tokens, args.facts, args.seed)
    doc_tokens = len(tokenizer(doc, add_special_tokens=False)["input_ids"])
    print(f"document: {doc_tokens} tokens, {len(facts)} facts", flush=True)
    records: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}

    def save(extra: dict[str, Any] | None = None) -> None:
        data = {
            "settings": {**vars(args), "document_tokens": doc_tokens, "max_new_tokens": MAX_NEW},
            "facts": [asdict(f) for f in facts],
            "records": records,
            "summary": summary,
        }
        env = {"loadavg": os.getloadavg(), "dtype": str(model.dtype)}
        write_result(args.name, {**data, **(extra or {})}, env)

    def print_record(record: dict[str, Any]) -> None:
        mark = "OK " if record["correct"] else "no "
        print(
            f"{record['method']:11s} {record['key']:>12s} {mark} {record['answer']!r}", flush=True
        )

    if "homer" in args.methods:
        began = time.perf_counter()
        cache = compress(model, tokenizer, doc)
        compress_s = time.perf_counter() - began
        kept = str(tokenizer.decode(cache.token_ids))
        answer_s = 0.0
        for fact in facts:
            t0 = time.perf_counter()
            answer = ask(model, tokenizer, cache, fact.question)
            answer_s += time.perf_counter() - t0
            record = {
                "method": "homer",
                "key": fact.key,
                "answer": answer,
                "correct": correct(answer, fact.key),
                "key_in_cache": fact.key in kept,
                "statement_in_cache": fact.statement in kept,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            records.append(record)
            print_record(record)
        summary["homer"] = {
            "asked": len(facts),
            "compress_s": round(compress_s, 1),
            "answer_s": round(answer_s, 1),
            "total_s": round(compress_s + answer_s, 1),
            "cache_len": cache.length,
            "keys_kept": sum(fact.key in kept for fact in facts),
        }
        save()

    if "truncated" in args.methods:
        began = time.perf_counter()
        trunc, prefill_s, first = run_truncated(model, tokenizer, doc, facts)
        for record in trunc:
            records.append(record)
            print_record(record)
        summary["truncated"] = {
            "asked": len(facts),
            "prefill_s": round(prefill_s, 1),
            "total_s": round(time.perf_counter() - began, 1),
            "first_doc_token_kept": first,
            "facts_in_window": sum(r["in_window"] for r in trunc),
        }
        save()

    if "homer-aware" in args.methods:
        limit = min(args.aware_limit or len(facts), len(facts))
        chosen = sorted({round(i * len(facts) / limit) for i in range(limit)})
        total = 0.0
        for index in chosen:
            fact = facts[index]
            t0 = time.perf_counter()
            aware = compress(model, tokenizer, doc, focus=fact.question)
            answer = ask(model, tokenizer, aware, fact.question)
            seconds = time.perf_counter() - t0
            total += seconds
            record = {
                "method": "homer-aware",
                "key": fact.key,
                "answer": answer,
                "correct": correct(answer, fact.key),
                "key_in_cache": fact.key in str(tokenizer.decode(aware.token_ids)),
                "seconds": round(seconds, 2),
            }
            records.append(record)
            print_record(record)
            save()
        summary["homer-aware"] = {
            "asked": len(chosen),
            "total_s": round(total, 1),
            "per_question_s": round(total / len(chosen), 1),
        }
        save()

    rows = []
    for method in args.methods:
        got = [r for r in records if r["method"] == method]
        if not got:
            continue
        right = sum(r["correct"] for r in got)
        info = summary[method]
        rows.append(
            [
                method,
                f"{right}/{len(got)} ({right / len(got):.0%})",
                info["total_s"],
                round(info["total_s"] / len(got), 1),
                notes(method, info, len(facts)),
            ]
        )
    table = markdown_table(["method", "right", "total s", "s / question", "notes"], rows)
    image = plot(facts, records, [m for m in args.methods if m in summary], args.name)
    save({"table": table, "plot": image})
    show(table, image)


if __name__ == "__main__":
    main()
