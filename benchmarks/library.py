"""A library of documents: ingest throughput with 1 and 2 processes, and questions across documents.

`throughput`: a folder of `--docs` public-domain documents of 8k-32k tokens (slices of
*Paradise Lost* and 1-2 Samuel, `benchmarks.books` / `benchmarks.common`) is ingested by
`homer ingest FOLDER` in one process, then by `accelerate launch --multi_gpu --num_processes 2
-m homer_cli ingest FOLDER` (two processes; CPU ones on this machine), each into a fresh store.
It reports documents per hour and each process's peak resident memory (sampled every 0.2 s).

`across`: four documents from four sources (the 1911 Britannica article, Milton's
*Areopagitica*, 1 Samuel, *Paradise Lost*), `--tokens` each, with `--needles` invented facts
inserted in each (`benchmarks.needles.make_needle`), ingested with a budget small enough for all
four caches to fit the window together. Each question is asked (greedy, 24 tokens):
- `right cache alone`: from the cache of the document that holds the fact (chosen by hand);
- `all four joined`: from the four caches joined into one (`homer ask -c a -c b -c c -c d`);
- `all four, the right one last`: the same four, the fact's document joined last (an oracle
  order: how much the document nearest the question matters);
- `router top-2, best last`: from the two caches BM25 ranks first (`choose_caches(limit=2)`),
  the best one joined last, as `homer ask --all` does;
each from the cache(s) alone, and (`, re-reading`) as `homer ask` answers by default: the best
passages re-read after the cache, 3 cited (`homer.grounding`), from the right document alone,
from all four joined, and for the router's top 2 from both documents (`re-reading all`) or from
its first choice only (`re-reading the first`, what `homer ask --all` does). The router's top-1
choice, and whether the first citation across all four lies in the fact's document, are
checked too. `--arms` runs only the arms named.

    python -m benchmarks.library across --tokens 4000 --needles 3
    python -m benchmarks.library throughput --docs 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, kjv_books, load_tokenizer, prose_parts
from benchmarks.needles import answered, haystack, insert, make_needle
from benchmarks.report import markdown_table, rate, show, write_result

QUESTION_TOKENS = 24


def sources() -> dict[str, str]:
    """Four public-domain texts of different kinds, by name."""
    from benchmarks.books import paradise_lost

    parts = dict(prose_parts("mixed"))
    return {
        "article": parts["article"],
        "areopagitica": parts["milton"],
        "samuel": "\n\n".join(kjv_books(9, 10)),
        "paradise": paradise_lost(),
    }


# ----------------------------------------------------------------------------- across documents


def across(args: argparse.Namespace) -> None:
    import homer
    from homer import HomerConfig
    from homer.grounding import Grounding
    from homer.library import choose_caches, open_joined
    from homer.service import Sampling

    home = Path(tempfile.mkdtemp(prefix="homer-library-"))
    store = homer.Store(home / "caches")  # a store of its own; the model and calibration shared
    model = homer.load_model()
    tokenizer = model.tokenizer
    rng = random.Random(args.seed)
    config = HomerConfig(target_len=args.budget)
    facts: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    folder = home / "docs"
    folder.mkdir()
    index = 0
    for source, text in sources().items():
        doc = haystack(tokenizer, text, args.tokens)
        for k in range(args.needles):
            needle = make_needle(rng, index)
            while any(f["question"] == needle.question for f in facts):
                needle = make_needle(rng, index)  # one fact per question in the whole library
            index += 1
            doc = insert(doc, needle.sentence, (k + 0.5) / args.needles)
            facts.append({"source": source, "question": needle.question, "key": needle.key})
        path = folder / f"{source}.txt"
        path.write_text(doc, encoding="utf-8")
        began = time.perf_counter()
        done = homer.ingest(path, model, store=store, config=config)
        names[source] = done.name
        print(
            f"ingested {source}: {done.record.document_tokens} tokens in "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
    sampling = Sampling(max_new_tokens=QUESTION_TOKENS)
    # As `homer ask` answers: re-reading the best passages (of every document joined), citing 3.
    grounding = Grounding(cite=3, reread=True)
    alone = {s: open_joined(model, [names[s]], store=store) for s in names}
    joined = open_joined(model, list(names.values()), store=store)
    records = []
    for fact in facts:
        choice = choose_caches(store, fact["question"], model, limit=2)
        top2 = open_joined(model, list(reversed(choice.names)), store=store)
        # As `homer ask --all` does: re-read and cite the router's first choice only.
        top2_first = open_joined(
            model, list(reversed(choice.names)), store=store, search=choice.names[:1]
        )
        right = names[fact["source"]]
        right_last = open_joined(
            model, [n for n in names.values() if n != right] + [right], store=store
        )
        arms = {
            "right cache alone": (alone[fact["source"]], False),
            "all four joined": (joined, False),
            "all four, the right one last": (right_last, False),
            "router top-2, best last": (top2, False),
            "right cache alone, re-reading": (alone[fact["source"]], True),
            "all four joined, re-reading": (joined, True),
            "router top-2, re-reading all": (top2, True),
            "router top-2, re-reading the first": (top2_first, True),
        }
        arms = {arm: v for arm, v in arms.items() if not args.arms or arm in args.arms}
        record = {
            **fact,
            "router": choice.names,
            "router_top1": choice.names[0] == names[fact["source"]],
        }
        for arm, (opened, reread) in arms.items():
            began = time.perf_counter()
            if reread:
                stream = homer.ask(
                    model,
                    opened.cache,
                    fact["question"],
                    sampling,
                    grounding=grounding,
                    document=opened.document,
                )
                reply = "".join(stream)
                cited = [c.source or names[fact["source"]] for c in stream.citations]
            else:
                reply = "".join(homer.ask(model, opened.cache, fact["question"], sampling))
                cited = []
            record[arm] = {
                "answer": reply,
                "correct": answered(fact["key"], reply),
                "seconds": round(time.perf_counter() - began, 2),
            }
            if cited:
                record[arm]["cited"] = cited
                record[arm]["cites_right_document"] = cited[0] == right
        records.append(record)
        print(
            f"{fact['source']:12s} {fact['key']!r:18s} router={choice.names[0]} "
            + " ".join(f"{arm}={record[arm]['correct']}" for arm in arms),
            flush=True,
        )
        write_result(args.name, {"records": records, "caches": names, "budget": args.budget})
    names_of_arms = list(arms)
    rows = [
        [arm, rate(sum(r[arm]["correct"] for r in records), len(records))] for arm in names_of_arms
    ]
    rows.append(
        [
            "router top-1 is the fact's document",
            rate(sum(r["router_top1"] for r in records), len(records)),
        ]
    )
    if "all four joined, re-reading" in names_of_arms:
        cites = [r["all four joined, re-reading"].get("cites_right_document") for r in records]
        rows.append(
            [
                "first citation (all four joined) is in the fact's document",
                rate(sum(bool(c) for c in cites), len(records)),
            ]
        )
    table = markdown_table(["question asked from", "right"], rows)
    write_result(
        args.name, {"records": records, "caches": names, "budget": args.budget, "table": table}
    )
    show(table)


# ----------------------------------------------------------------------------- throughput


def _watch(proc: subprocess.Popen[bytes]) -> dict[int, float]:
    """Peak resident MiB of `proc` and each of its descendants, sampled until it ends."""
    import psutil

    peaks: dict[int, float] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                if "homer_cli" not in " ".join(p.cmdline()):
                    continue
                mib = p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            peaks[p.pid] = max(peaks.get(p.pid, 0.0), mib)
        time.sleep(0.2)
    return peaks


def throughput(args: argparse.Namespace) -> None:
    from benchmarks.books import paradise_lost
    from homer import calibrate, load_model
    from homer.paths import calibration_dir, models_dir

    model = load_model()  # converts the embedded model and calibrates it once, untimed
    calibrate(model.model, model.tokenizer)
    del model
    tokenizer = load_tokenizer()
    corpus = paradise_lost() + "\n\n" + "\n\n".join(kjv_books(9, 10))
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    lengths = [8000, 8000, 8000, 12000, 12000, 16000, 16000, 32000][: args.docs]
    folder = Path(tempfile.mkdtemp(prefix="homer-shelf-"))
    start = 0
    for i, length in enumerate(lengths):
        (folder / f"doc{i}.txt").write_text(str(tokenizer.decode(ids[start : start + length])))
        start += length
    runs = {
        "1 process": [sys.executable, "-m", "homer_cli", "ingest", str(folder), "--json"],
        "2 processes": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "homer_cli",
            "ingest",
            str(folder),
            "--json",
        ],
    }
    results = []
    for label, command in runs.items():
        home = Path(tempfile.mkdtemp(prefix="homer-throughput-"))
        # A fresh store; the converted model and the calibration are shared, not timed.
        (home / "models").symlink_to(models_dir())
        (home / "calibration").symlink_to(calibration_dir())
        env = {**os.environ, "HOMER_HOME": str(home)}
        began = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, cwd=ROOT)
        peaks = _watch(proc)
        out = proc.communicate()[0].decode()
        seconds = time.perf_counter() - began
        rows = json.loads(out.strip().splitlines()[-1])
        saved = sum(r["status"] == "saved" for r in rows)
        result = {
            "run": label,
            "documents": len(rows),
            "saved": saved,
            "tokens": sum(r["document_tokens"] for r in rows),
            "seconds": round(seconds, 1),
            "documents_per_hour": round(len(rows) / seconds * 3600, 1),
            "peak_rss_mib_per_process": sorted(round(v) for v in peaks.values()),
            "returncode": proc.returncode,
        }
        results.append(result)
        print(result, flush=True)
        write_result(args.name, {"results": results, "lengths": lengths})
    table = markdown_table(
        ["run", "documents", "tokens", "seconds", "documents / hour", "peak RSS per process (MiB)"],
        [
            [
                r["run"],
                r["documents"],
                f"{r['tokens']:,}",
                r["seconds"],
                r["documents_per_hour"],
                ", ".join(map(str, r["peak_rss_mib_per_process"])),
            ]
            for r in results
        ],
    )
    write_result(args.name, {"results": results, "lengths": lengths, "table": table})
    show(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("across", help="questions across a 4-document library")
    a.add_argument("--tokens", type=int, default=4000, help="tokens per document")
    a.add_argument("--needles", type=int, default=3, help="facts per document")
    a.add_argument("--budget", type=int, default=1536, help="cache tokens per document")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--arms", nargs="+", default=None, help="only these arms (default: all)")
    a.add_argument("--name", default="library_across")
    t = sub.add_parser("throughput", help="folder ingest with 1 and 2 processes")
    t.add_argument("--docs", type=int, default=8)
    t.add_argument("--name", default="library_throughput")
    args = parser.parse_args()
    across(args) if args.what == "across" else throughput(args)


if __name__ == "__main__":
    main()
