"""Asking from a saved cache versus re-reading the document, and what a saved cache costs on disk.

    python -m benchmarks.ask_speed --tokens 32768 --economics 4096 8192 16384 32768 65536

One ~`--tokens`-token document of public-domain prose (see `benchmarks.longtext`) with one fact
sentence in the middle is written to a temp folder. Then, each step in its own fresh process:

- `homer ingest DOC` once, into a temp `HOMER_HOME` (only the store is new: the converted
  embedded model and the calibration bias are linked from the user's usual folders, so nothing is
  converted or calibrated during the run);
- `homer ask QUESTION --cache NAME --json`: the process's wall time, and the model-load,
  cache-load and first-token times it reports;
- re-reading with HOMER: a process that loads the model, runs `homer.compress` on the document and
  answers (what `ask` would cost without a saved cache);
- re-reading with the plain model: a process that loads the model and runs the whole document
  plus the question through it (past its 8k window at 32k tokens: the answer is not expected to
  be right; this is the time a plain model needs to its first token).

"Launch to first token" is counted from starting the process, so interpreter start, imports and
model load are in it for every method; "after load" leaves them out. The speed-up is the
re-reading time over `ask`'s.

Cache economics: for each `--economics` length a document of that length is ingested and asked
once; the homer cache's size is the size of its files in the store, the full kv-cache's size is
computed (layers x 2 x kv heads x head dim x tokens x bytes per element, in the model's dtype).
The plain model is re-run only at the lengths in `--plain-lengths`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.report import markdown_table, pyplot, save_figure, show, write_result

FACT = "The lighthouse keeper's daughter, Elspeth Marrow, kept a green parrot named Captain Bolt."
QUESTION = "What was the name of the green parrot kept by the lighthouse keeper's daughter?"
ANSWER = "Bolt"
MAX_TOKENS = 16


# ---------------------------------------------------------------------------------------------
# Children: re-reading the document in a fresh process


def child_reread(doc: Path, method: str, launched: float) -> dict[str, Any]:
    """Load the model, read `doc` whole (HOMER or plain), answer; times from `launched`."""
    import torch

    from homer.models import load_model

    began = time.perf_counter()
    model, tokenizer = load_model(None)
    loaded = time.perf_counter()
    text = doc.read_text(encoding="utf-8")
    record: dict[str, Any] = {"model_load_s": round(loaded - began, 3)}
    if method == "homer":
        from homer import compress, generate

        cache = compress(model, tokenizer, text)
        read = time.perf_counter()
        stream = generate(model, tokenizer, cache, QUESTION, max_new_tokens=MAX_TOKENS)
        pieces = iter(stream)
        answer = next(pieces, "")
        first, first_perf = time.time(), time.perf_counter()
        answer += "".join(pieces)
        record["read_s"] = round(read - loaded, 3)
        record["first_token_after_read_s"] = round(stream.stats.time_to_first_token_s, 3)
    else:
        messages = [{"role": "user", "content": f"{text}\n\n{QUESTION}"}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # newer transformers return a BatchEncoding
            ids = list(ids["input_ids"])
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
        first, first_perf = time.time(), time.perf_counter()
        read = first_perf
        answer = str(tokenizer.decode([token]))
        record["read_s"] = round(read - loaded, 3)
        record["prompt_tokens"] = len(ids)
    record["after_load_to_first_token_s"] = round(first_perf - loaded, 3)
    record["launch_to_first_token_s"] = round(first - launched, 3)
    record["answer"] = answer.strip()
    return record


# ---------------------------------------------------------------------------------------------
# The parent


def _run(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run `command`; return its stdout and wall seconds (raises with stderr on failure)."""
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{proc.stderr[-2000:]}")
    return proc.stdout, wall


def homer_home() -> tuple[Path, dict[str, str]]:
    """A temp HOMER_HOME with an empty store, sharing the user's converted model and calibration."""
    from homer import paths

    saved = os.environ.pop("HOMER_HOME", None)
    models, calibration = paths.models_dir(), paths.calibration_dir()
    if saved is not None:
        os.environ["HOMER_HOME"] = saved
    home = Path(tempfile.mkdtemp(prefix="homer-ask-speed-"))
    for link, target in (("models", models), ("calibration", calibration)):
        if target.exists():
            (home / link).symlink_to(target, target_is_directory=True)
    return home, {**os.environ, "HOMER_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}


def full_cache_bytes(config: Any, tokens: int, bytes_per_element: int) -> int:
    """Bytes of a plain kv-cache holding `tokens` positions in every layer."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers * 2 * kv_heads * head_dim * tokens * bytes_per_element)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ingest_and_ask(doc: Path, env: dict[str, str], store: Path) -> dict[str, Any]:
    """`homer ingest` then `homer ask --json` on `doc`, each in a fresh process."""
    homer = [sys.executable, "-m", "homer_cli"]
    out, ingest_wall = _run([*homer, "ingest", str(doc)], env)
    name = out.strip().splitlines()[-1]
    out, ask_wall = _run(
        [*homer, "ask", QUESTION, "--cache", name, "--json", "--max-tokens", str(MAX_TOKENS)], env
    )
    payload = json.loads(out.strip().splitlines()[-1])
    timings = payload["timings"]
    after_first = timings["generation_s"] - timings["time_to_first_token_s"]
    return {
        "cache": name,
        "ingest_wall_s": round(ingest_wall, 2),
        "cache_bytes": dir_bytes(store / name),
        "ask_wall_s": round(ask_wall, 2),
        # Launch to first token: the process's wall time less what it spent after the first token.
        "ask_launch_to_first_token_s": round(ask_wall - after_first, 3),
        "ask_after_load_to_first_token_s": round(
            timings["cache_load_s"] + timings["time_to_first_token_s"], 3
        ),
        "ask_timings": timings,
        "tokens": payload["tokens"],
        "answer": payload["answer"],
    }


def reread(doc: Path, method: str, env: dict[str, str]) -> dict[str, Any]:
    launched = time.time()
    command = [sys.executable, "-m", "benchmarks.ask_speed", "--child", method, str(doc)]
    out, wall = _run([*command, str(launched)], env)
    return {**json.loads(out.strip().splitlines()[-1]), "process_wall_s": round(wall, 2)}


def plot(rows: list[dict[str, Any]], name: str) -> str:
    """Disk size and time to first token against document length; returns the PNG path."""
    plt = pyplot()
    fig, (disk, ttft) = plt.subplots(1, 2, figsize=(9, 3.4))
    xs = [r["length"] / 1024 for r in rows]
    disk.plot(xs, [r["full_cache_bytes"] / 2**20 for r in rows], "s--", label="full kv-cache")
    have = [r for r in rows if r.get("homer_cache_bytes")]
    disk.plot(
        [r["length"] / 1024 for r in have],
        [r["homer_cache_bytes"] / 2**20 for r in have],
        "o-",
        label="homer cache (files)",
    )
    disk.set_ylabel("size (MiB)", fontsize=8)
    series = (
        ("ask_launch_to_first_token_s", "o-", "homer ask (saved cache)"),
        ("homer_reread_launch_to_first_token_s", "^-", "re-read: compress + ask"),
        ("plain_launch_to_first_token_s", "s--", "re-read: plain model"),
    )
    for key, style, label in series:
        have = [r for r in rows if r.get(key) is not None]
        if have:
            xs = [r["length"] / 1024 for r in have]
            ttft.plot(xs, [r[key] for r in have], style, label=label)
    ttft.set_ylabel("launch to first token (s)", fontsize=8)
    ttft.set_yscale("log")
    for ax in (disk, ttft):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document tokens (k)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Cache economics: SmolLM2-135M (bf16, CPU)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768, help="length of the main document")
    parser.add_argument(
        "--economics", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument("--plain-lengths", type=int, nargs="*", default=None)
    parser.add_argument("--homer-reread-lengths", type=int, nargs="*", default=None)
    parser.add_argument("--name", default="ask_speed")
    parser.add_argument("--keep", action="store_true", help="keep the temp HOMER_HOME")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        method, doc, launched = args.child
        print(json.dumps(child_reread(Path(doc), method, float(launched))), flush=True)
        return

    from homer.models import load_model

    model, tokenizer = load_model(None)
    config, dtype = model.config, model.dtype
    bytes_per_element = int(model.dtype.itemsize)
    from homer import calibrate

    calibrate(model, tokenizer)  # built once here (cached on disk), never inside a timed process
    from benchmarks.longtext import document

    home, env = homer_home()
    # A SIGTERM (e.g. `timeout`) still runs the `finally` below that removes the temp home.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plain_lengths = args.plain_lengths if args.plain_lengths is not None else [args.tokens]
    reread_lengths = (
        args.homer_reread_lengths if args.homer_reread_lengths is not None else [args.tokens]
    )
    lengths = sorted({args.tokens, *args.economics})
    rows: list[dict[str, Any]] = []

    def save(extra: dict[str, Any] | None = None) -> None:
        env_record = {"loadavg": [round(x, 2) for x in os.getloadavg()], "model_dtype": str(dtype)}
        write_result(args.name, {"rows": rows, **(extra or {})}, env_record)

    try:
        for length in lengths:
            doc = home / f"doc-{length}.txt"
            doc.write_text(document(tokenizer, length, fact=FACT), encoding="utf-8")
            row: dict[str, Any] = {
                "length": length,
                "document_tokens": len(tokenizer(doc.read_text())["input_ids"]),
            }
            row["full_cache_bytes"] = full_cache_bytes(
                config, row["document_tokens"], bytes_per_element
            )
            asked = ingest_and_ask(doc, env, home / "caches")
            row.update(asked)
            row["homer_cache_bytes"] = asked["cache_bytes"]
            print(
                f"{length:6d} ingest {asked['ingest_wall_s']:.1f}s  ask {asked['ask_wall_s']:.1f}s "
                f"(load {asked['ask_timings']['model_load_s']:.2f}s, cache "
                f"{asked['ask_timings']['cache_load_s']:.2f}s, first token "
                f"{asked['ask_timings']['time_to_first_token_s']:.2f}s) "
                f"{asked['cache_bytes'] / 2**20:.1f} MiB {asked['answer']!r}",
                flush=True,
            )
            if length in reread_lengths:
                again = reread(doc, "homer", env)
                row["homer_reread"] = again
                row["homer_reread_launch_to_first_token_s"] = again["launch_to_first_token_s"]
                print(f"        re-read with homer: {again}", flush=True)
            if length in plain_lengths:
                plain = reread(doc, "plain", env)
                row["plain"] = plain
                row["plain_launch_to_first_token_s"] = plain["launch_to_first_token_s"]
                print(f"        re-read with the plain model: {plain}", flush=True)
            row["ask_launch_to_first_token_s"] = asked["ask_launch_to_first_token_s"]
            rows.append(row)
            save()
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    speed_rows, econ_rows = [], []
    for r in rows:
        ask = r["ask_launch_to_first_token_s"]
        ask_after = r["ask_after_load_to_first_token_s"]
        for label, key in (("homer compress + ask", "homer_reread"), ("plain model", "plain")):
            if key in r:
                other = r[key]
                speed_rows.append(
                    [
                        f"{r['length'] // 1024}k",
                        label,
                        f"{other['launch_to_first_token_s']:.1f}",
                        f"{ask:.2f}",
                        f"{other['launch_to_first_token_s'] / ask:.0f}x",
                        f"{other['after_load_to_first_token_s']:.1f}",
                        f"{ask_after:.2f}",
                        f"{other['after_load_to_first_token_s'] / ask_after:.0f}x",
                    ]
                )
        t = r["ask_timings"]
        econ_rows.append(
            [
                f"{r['length'] // 1024}k",
                r["document_tokens"],
                f"{r['full_cache_bytes'] / 2**20:.1f}",
                f"{r['homer_cache_bytes'] / 2**20:.1f}",
                f"{r['full_cache_bytes'] / r['homer_cache_bytes']:.1f}x",
                f"{r['ingest_wall_s']:.1f}",
                f"{r['ask_wall_s']:.1f}",
                f"{t['model_load_s']:.2f}",
                f"{t['cache_load_s']:.2f}",
                f"{t['time_to_first_token_s']:.2f}",
            ]
        )
    speed = markdown_table(
        [
            "doc",
            "re-reading with",
            "re-read: launch→1st token s",
            "ask: launch→1st token s",
            "speed-up",
            "re-read: after load s",
            "ask: after load s",
            "speed-up after load",
        ],
        speed_rows,
    )
    economics = markdown_table(
        [
            "doc",
            "doc tokens",
            "full kv-cache MiB (computed)",
            "homer cache MiB (files)",
            "ratio",
            "ingest process s",
            "ask process s",
            "ask: model load s",
            "ask: cache load s",
            "ask: first token s",
        ],
        econ_rows,
    )
    image = plot(rows, args.name)
    save({"speed_table": speed, "economics_table": economics, "plot": image})
    show(f"{speed}\n\n{economics}", image)


if __name__ == "__main__":
    main()
