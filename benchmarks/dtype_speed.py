"""Compression and decoding speed on the CPU in bfloat16 and float32, and whether answers agree.

    python -m benchmarks.dtype_speed --tokens 16384 --new-tokens 64 --repeat 3 --compress-repeat 2

One ~`--tokens`-token document of public-domain prose (`benchmarks.longtext`) with one fact
sentence in the middle. Every cell runs in its own fresh process, with the embedded model
(SmolLM2-135M-Instruct) loaded in the cell's dtype through `homer.load_model`:

- compress: `homer.ingest` of the document into a temp store of that dtype (the calibration bias
  is dtype-independent and shared with the user's, so only compression is timed); document
  tokens per second of compression;
- decode: the model in the decoding dtype opens a cache saved by a compress cell (converted to
  the model's dtype on load, as `homer ask` does, timed), then answers two prompts greedily: the
  summary prompt with `--new-tokens` tokens and loops allowed (decoding speed: tokens after the
  first over the seconds after the first), and the fact question (the answer a user would see).

Each compression runs `--compress-repeat` times and each decoding cell `--repeat` times, the
dtypes alternating, and the table shows medians (the machine is shared, so single runs wander).
Answers are compared across cells: the same greedy text in every dtype combination means the
dtype changes speed only. Results go to `benchmarks/results/dtype_speed.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.common import ROOT, load_tokenizer
from benchmarks.report import markdown_table, show, write_result

FACT = "The lighthouse keeper's daughter, Elspeth Marrow, kept a green parrot named Captain Bolt."
QUESTION = "What was the name of the green parrot kept by the lighthouse keeper's daughter?"
DTYPES = ("bfloat16", "float32")


def child_compress(doc: Path, dtype: str, store_root: Path) -> dict[str, Any]:
    import torch

    import homer
    from homer.store import Store

    began = time.perf_counter()
    model = homer.load_model(homer.ModelChoice(device="cpu", dtype=dtype))
    loaded = time.perf_counter()
    done = homer.ingest(doc, model, store=Store(store_root), force=True)
    return {
        "phase": "compress",
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "model_load_s": round(loaded - began, 3),
        "compress_s": round(done.seconds, 3),
        "document_tokens": done.record.document_tokens,
        "cache_tokens": done.record.cache_tokens,
        "tokens_per_s": round(done.record.document_tokens / done.seconds, 1),
        "cache": done.name,
    }


def child_decode(store_root: Path, name: str, dtype: str, new_tokens: int) -> dict[str, Any]:
    import torch

    import homer
    from homer.prompts import SUMMARY_QUESTION
    from homer.store import Store

    model = homer.load_model(homer.ModelChoice(device="cpu", dtype=dtype))
    opened = homer.open_cache(model, name, store=Store(store_root))
    record: dict[str, Any] = {
        "phase": "decode",
        "dtype": dtype,
        "cache_dtype": opened.record.meta.get("dtype"),
        "threads": torch.get_num_threads(),
        "cache_open_s": round(opened.seconds, 3),
    }
    long = homer.Sampling(max_new_tokens=new_tokens, stop_loops=False)
    stream = homer.ask(model, opened.cache, SUMMARY_QUESTION, long)
    record["summary"] = "".join(stream)
    stats = stream.stats
    after_first = stats.total_s - stats.time_to_first_token_s
    record["summary_tokens"] = stats.new_tokens
    record["first_token_s"] = round(stats.time_to_first_token_s, 3)
    record["decode_s"] = round(after_first, 3)
    record["tokens_per_s"] = round((stats.new_tokens - 1) / after_first, 2)
    stream = homer.ask(model, opened.cache, QUESTION, homer.Sampling(max_new_tokens=24))
    record["answer"] = "".join(stream).strip()
    record["answer_first_token_s"] = round(stream.stats.time_to_first_token_s, 3)
    return record


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.dtype_speed", "--child", *args]
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = round(time.perf_counter() - began, 2)
    # The machine is shared: how busy it was when the cell ended (1-minute load average).
    out["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--name", default="dtype_speed")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each decoding cell")
    parser.add_argument("--compress-repeat", type=int, default=2, help="runs of each compression")
    parser.add_argument("--work", type=Path, help="an earlier run's folder, to reuse its caches")
    parser.add_argument(
        "--cache-dtypes", nargs="+", default=list(DTYPES), help="decode from caches built in these"
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "compress":
            out = child_compress(Path(rest[0]), rest[1], Path(rest[2]))
        else:
            out = child_decode(Path(rest[0]), rest[1], rest[2], int(rest[3]))
        print(json.dumps(out))
        return

    from benchmarks.longtext import document

    if args.work is not None:  # decode again from the caches an earlier run saved there
        work = args.work
    else:
        work = Path(tempfile.mkdtemp(prefix="homer-dtype-speed-"))
        (work / "document.txt").write_text(
            document(load_tokenizer(), args.tokens, fact=FACT), encoding="utf-8"
        )
    doc = work / "document.txt"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    compress_runs: list[dict[str, Any]] = []
    for n in range(args.compress_repeat):  # dtypes alternate, so load drifts hit both alike
        for dtype in DTYPES if n % 2 == 0 else DTYPES[::-1]:
            store = work / f"{dtype}-{n}"
            compress_runs.append(_child(["compress", str(doc), dtype, str(store)], env))
            compress_runs[-1]["store"] = str(store)
            print(json.dumps(compress_runs[-1]), file=sys.stderr)
    if compress_runs:
        first = {dtype: next(c for c in compress_runs if c["dtype"] == dtype) for dtype in DTYPES}
    else:  # `--compress-repeat 0`: the caches of the earlier run's first cells
        from homer.store import Store

        stores = {dtype: min(p for p in work.glob(f"{dtype}*") if p.is_dir()) for dtype in DTYPES}
        first = {d: {"store": str(p), "cache": Store(p).names()[0]} for d, p in stores.items()}
    decode_runs: list[dict[str, Any]] = []
    cells = [(cache_dtype, dtype) for cache_dtype in args.cache_dtypes for dtype in DTYPES]
    for n in range(args.repeat):
        for cache_dtype, dtype in cells if n % 2 == 0 else cells[::-1]:
            made = first[cache_dtype]
            cell = [made["store"], made["cache"], dtype, str(args.new_tokens)]
            decode_runs.append(_child(["decode", *cell], env))
            print(json.dumps(decode_runs[-1])[:400], file=sys.stderr)
    summary = _summary(compress_runs, decode_runs)
    from_bf16 = [d for d in decode_runs if d["cache_dtype"] == "bfloat16"]
    result = {
        "command": " ".join(["python -m benchmarks.dtype_speed", *sys.argv[1:]]),
        "model": "smollm2-135m-instruct",
        "device": "cpu",
        "note": "2-core CPU shared with other work; each cell a fresh process; medians of "
        "the repeats in `summary`, every run in `compress_runs` / `decode_runs`",
        "summary": summary,
        "compress_runs": compress_runs,
        "decode_runs": decode_runs,
        "same_answers_from_bf16_cache": len({d["answer"] for d in from_bf16}) == 1,
        "same_summaries_from_bf16_cache": len({d["summary"] for d in from_bf16}) == 1,
        "same_answers_all_cells": len({d["answer"] for d in decode_runs}) == 1,
    }
    path = write_result(args.name, result)
    rows = [
        [row["cell"], row["tokens_per_s"], row["seconds"], row.get("first_token_s", ""), row["n"]]
        for row in summary
    ]
    show(markdown_table(["cell", "tokens/s", "seconds", "first token s", "runs"], rows))
    print(path)


def _summary(
    compress_runs: list[dict[str, Any]], decode_runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per cell: the median over its repeats."""
    rows = []
    for dtype in DTYPES:
        runs = [c for c in compress_runs if c["dtype"] == dtype]
        if not runs:
            continue
        rows.append(
            {
                "cell": f"compress {dtype}",
                "tokens_per_s": round(median([c["tokens_per_s"] for c in runs]), 1),
                "seconds": round(median([c["compress_s"] for c in runs]), 1),
                "n": len(runs),
            }
        )
    for cache_dtype in DTYPES:
        for dtype in DTYPES:
            runs = [
                d for d in decode_runs if d["dtype"] == dtype and d["cache_dtype"] == cache_dtype
            ]
            if not runs:
                continue
            rows.append(
                {
                    "cell": f"decode {dtype} (cache {cache_dtype})",
                    "tokens_per_s": round(median([d["tokens_per_s"] for d in runs]), 2),
                    "seconds": round(median([d["decode_s"] for d in runs]), 2),
                    "first_token_s": round(median([d["first_token_s"] for d in runs]), 2),
                    "cache_open_s": round(median([d["cache_open_s"] for d in runs]), 2),
                    "n": len(runs),
                }
            )
    return rows


if __name__ == "__main__":
    main()
