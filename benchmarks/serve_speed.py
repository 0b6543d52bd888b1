"""Follow-up questions through a warm `homer serve` versus a cold `homer ask` and the bare library.

    python -m benchmarks.serve_speed --tokens 32768 --questions 10 --cold 3

One ~`--tokens`-token document of public-domain prose (`benchmarks.longtext`, the same text and
fact as `benchmarks.ask_speed`) is ingested once with default settings (a 4,096-token cache on
the embedded SmolLM2-135M) into a temp `HOMER_HOME` that links the user's converted model and
calibration. Then the same follow-up questions (greedy, `--max-tokens` each) are asked:

- cold `homer ask --local` (a new process: imports, model load, cache load), `--cold` of them;
- `homer ask` through a warm server (a new process that finds the server and streams from it);
- the official `openai` client against the server, streaming;
- the bare library in one warm process (`homer.ask` on an opened cache), the baseline.

Time to first token is counted from launching the process (cold and CLI) or from sending the
request / calling `ask` (client, library); "total" ends with the last piece. Decoding speed is
`(answer tokens - 1) / (total - time to first token)`, as the server and library report it.
Every process runs torch with `--threads` threads (default 1, through `OMP_NUM_THREADS` and
`torch.set_num_threads`): on a machine shared with other jobs, two threads per process spent
most of their time waiting for each other (a tiny model's token took ~50x longer), which would
measure the neighbours rather than homer. The same setting holds for every method compared.
Then 4 clients ask 4 questions at once (answers compared with the one-client answers; throughput
is answer tokens over the wall time of the batch), and the server's resident memory is read after
it loads each of `--memory-caches` caches (copies of the one cache under other names: same size,
distinct entries) with `--max-caches` as its bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from statistics import median
from typing import Any

from benchmarks.ask_speed import FACT, homer_home
from benchmarks.common import ROOT
from benchmarks.report import markdown_table, show, write_result

QUESTIONS = [
    "In which town was Shakespeare born?",
    "Who was Shakespeare's wife?",
    "What was the name of the green parrot kept by the lighthouse keeper's daughter?",
    "Which theatre is the document about?",
    "Who were Shakespeare's parents?",
    "When did Shakespeare die?",
    "What is the First Folio?",
    "Which plays does the document mention?",
    "Who engraved the portrait of Shakespeare printed in the First Folio?",
    "What was Shakespeare's father's trade?",
    "Which company of actors did Shakespeare belong to?",
    "What are the sonnets?",
    "Where did Shakespeare go to school?",
    "Who was Ben Jonson?",
    "What did Shakespeare leave his wife in his will?",
    "When was Shakespeare married?",
    "How many children did Shakespeare have?",
    "What is said about Shakespeare's learning?",
    "Which poems did Shakespeare publish first?",
    "Summarize the document in one sentence.",
]
HOMER = [sys.executable, "-m", "homer_cli"]
_LISTENING = re.compile(r"listening on (http://\S+)")


def run(command: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def timed_process(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Launch `command`; the time to its first byte on stdout and to its exit, and its stdout."""
    launched = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    first_s = time.perf_counter() - launched
    rest = proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else b""
    code = proc.wait()
    total = time.perf_counter() - launched
    if code != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} failed:\n{err.decode()[-2000:]}")
    return {"first_s": first_s, "total_s": total, "stdout": (first + rest).decode()}


class Server:
    """`homer serve --port 0` in the background, stopped with SIGINT."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [*HOMER, "serve", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.log: list[str] = []
        for line in self.process.stderr:
            self.log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise RuntimeError("homer serve did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def rss_bytes(self) -> int:
        import psutil

        return int(psutil.Process(self.process.pid).memory_info().rss)

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/health", timeout=30).json()  # type: ignore[no-any-return]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def stream_openai(client: Any, cache: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One streamed answer through the openai client: first-token and total times, the text."""
    sent = time.perf_counter()
    stream = client.chat.completions.create(
        model=f"homer/{cache}",
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = None
    pieces: list[str] = []
    tokens = 0
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                if first is None:
                    first = time.perf_counter() - sent
                pieces.append(choice.delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - sent
    first = total if first is None else first
    return {"first_s": first, "total_s": total, "text": "".join(pieces), "tokens": tokens}


def tokens_per_s(tokens: int, first: float, total: float) -> float | None:
    return (tokens - 1) / (total - first) if tokens > 1 and total > first else None


def summary(rows: list[dict[str, Any]], key: str) -> float:
    return median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--cold", type=int, default=3, help="cold `homer ask` processes")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-caches", type=int, default=3)
    parser.add_argument("--memory-caches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--name", default="serve_speed")
    args = parser.parse_args()
    questions = QUESTIONS[: args.questions]
    import torch

    torch.set_num_threads(args.threads)

    from homer import calibrate
    from homer.models import load_model

    model, tokenizer = load_model(None)
    calibrate(model, tokenizer)  # measured once here (cached on disk), never inside a timed run
    del model
    from benchmarks.longtext import document

    home, env = homer_home()
    env = {**env, "HOMER_SERVER": "off", "OMP_NUM_THREADS": str(args.threads)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server: Server | None = None
    result: dict[str, Any] = {
        "questions": questions,
        "max_tokens": args.max_tokens,
        "torch_threads": args.threads,
    }
    try:
        doc = home / "doc.txt"
        doc.write_text(document(tokenizer, args.tokens, fact=FACT), encoding="utf-8")
        began = time.perf_counter()
        name = run([*HOMER, "ingest", str(doc)], env).strip().splitlines()[-1]
        result["ingest_s"] = round(time.perf_counter() - began, 1)
        shown = json.loads(run([*HOMER, "show", name], env))
        result["document_tokens"] = shown["tokens"]["document"]
        result["cache_tokens"] = shown["tokens"]["cache"]
        print(
            f"ingested {result['document_tokens']} tokens -> {result['cache_tokens']}", flush=True
        )
        ask = [*HOMER, "ask", "-c", name, "-n", str(args.max_tokens)]

        # 1. cold `homer ask`, in-process, a new process each
        cold = []
        for question in questions[: args.cold]:
            timed = timed_process([*ask, "--local", question], env)
            cold.append({"question": question, **timed, "answer": timed["stdout"].strip()})
            print(
                f"cold ask: first {timed['first_s']:.2f}s total {timed['total_s']:.2f}s", flush=True
            )

        # 2. the bare library, one warm process (this one)
        import homer

        loaded = homer.load_model()
        opened = homer.open_cache(loaded, name, store=homer.Store(home / "caches"))
        library: list[dict[str, Any]] = []
        for question in questions:
            called = time.perf_counter()
            stream = homer.ask(loaded, opened.cache, question, homer.Sampling(args.max_tokens))
            first = None
            pieces = []
            for piece in stream:
                if first is None:
                    first = time.perf_counter() - called
                pieces.append(piece)
            total = time.perf_counter() - called
            first = total if first is None else first
            library.append(
                {
                    "question": question,
                    "first_s": first,
                    "total_s": total,
                    "text": "".join(pieces),
                    "tokens": stream.stats.new_tokens,
                    "tokens_per_s": tokens_per_s(stream.stats.new_tokens, first, total),
                }
            )
        print(f"library: first {summary(library, 'first_s'):.3f}s", flush=True)
        del loaded, opened

        # 3. a warm server: `homer ask` through it, and the openai client
        server = Server(env, "--keep-alive", "-1", "--max-caches", str(args.max_caches))
        served_env = {**env, "HOMER_SERVER": server.url}
        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=600)
        warmup = stream_openai(client, name, questions[0], 1)  # loads the model and the cache
        result["server_first_request_s"] = round(warmup["total_s"], 3)
        through_cli = []
        for question in questions:
            timed = timed_process([*ask, question], served_env)
            through_cli.append({"question": question, **timed, "answer": timed["stdout"].strip()})
        print(f"cli via server: first {summary(through_cli, 'first_s'):.3f}s", flush=True)
        through_client = []
        for question in questions:
            answer = stream_openai(client, name, question, args.max_tokens)
            answer["tokens_per_s"] = tokens_per_s(
                answer["tokens"], answer["first_s"], answer["total_s"]
            )
            through_client.append({"question": question, **answer})
        print(f"openai client: first {summary(through_client, 'first_s'):.3f}s", flush=True)
        # Server-side decoding speed, as the server measured it (no HTTP in it).
        server_rates = []
        for question in questions[:3]:
            reply = client.chat.completions.create(
                model=f"homer/{name}",
                messages=[{"role": "user", "content": question}],
                max_tokens=args.max_tokens,
                temperature=0,
            )
            info = (reply.model_extra or {})["homer"]
            t = info["timings"]
            rate = tokens_per_s(
                info["tokens"]["answer"], t["time_to_first_token_s"], t["generation_s"]
            )
            server_rates.append(rate)

        # 4. concurrent clients
        batch = questions[: args.clients]
        got: dict[int, dict[str, Any]] = {}

        def one(i: int) -> None:
            got[i] = stream_openai(client, name, batch[i], args.max_tokens)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        alone = {r["question"]: r["text"] for r in through_client}
        concurrent = {
            "clients": len(batch),
            "wall_s": round(wall, 3),
            "answers_equal_one_client": all(
                got[i]["text"] == alone[q] for i, q in enumerate(batch)
            ),
            "tokens": sum(got[i]["tokens"] for i in range(len(batch))),
            "first_s": [round(got[i]["first_s"], 3) for i in range(len(batch))],
        }
        concurrent["tokens_per_s"] = round(concurrent["tokens"] / wall, 2)
        one_client_rate = sum(r["tokens"] for r in through_client[: len(batch)]) / sum(
            r["total_s"] for r in through_client[: len(batch)]
        )
        concurrent["one_client_tokens_per_s"] = round(one_client_rate, 2)
        print(f"concurrent: {concurrent}", flush=True)

        # 5. memory: the server holding 1 model and N caches, bounded by --max-caches
        memory = [{"caches_asked": 1, **_memory(server)}]
        for k in range(2, args.memory_caches + 1):
            copy = f"{name}-copy{k}"
            run([*HOMER, "ingest", str(doc), "--name", copy], env)  # same content: a copy
            stream_openai(client, copy, questions[0], 1)
            memory.append({"caches_asked": k, **_memory(server)})
        print(f"memory: {memory}", flush=True)
        code = server.stop()
        server = None
        result["server_exit_code"] = code
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)

    equal_cli = all(
        c["answer"] == lib["text"].strip() for c, lib in zip(through_cli, library, strict=True)
    )
    equal_client = all(
        c["text"] == lib["text"] for c, lib in zip(through_client, library, strict=True)
    )
    rates_library: list[float] = [r["tokens_per_s"] for r in library if r["tokens_per_s"]]
    rates_client: list[float] = [r["tokens_per_s"] for r in through_client if r["tokens_per_s"]]
    rates_server: list[float] = [r for r in server_rates if r]
    methods = [
        ("cold `homer ask` (new process)", cold),
        ("`homer ask` through the server", through_cli),
        ("openai client → server", through_client),
        ("library, one warm process", library),
    ]
    lib_first = summary(library, "first_s")
    rows = [
        [
            label,
            len(rows_),
            f"{summary(rows_, 'first_s'):.3f}",
            f"{summary(rows_, 'total_s'):.3f}",
            f"{summary(rows_, 'first_s') / lib_first:.1f}x",
        ]
        for label, rows_ in methods
    ]
    table = markdown_table(
        ["method", "questions", "first token s (median)", "total s (median)", "vs library"],
        rows,
    )
    result.update(
        {
            "cold": cold,
            "library": library,
            "cli_through_server": through_cli,
            "openai_through_server": through_client,
            "answers_equal_library": {"cli": equal_cli, "openai": equal_client},
            "decode_tokens_per_s": {
                "library_median": round(median(rates_library), 2) if rates_library else None,
                "openai_client_median": round(median(rates_client), 2) if rates_client else None,
                "server_reported_median": round(median(rates_server), 2) if rates_server else None,
            },
            "concurrent": concurrent,
            "memory": memory,
            "max_caches": args.max_caches,
            "table": table,
            "cold_over_cli_first_token": round(
                summary(cold, "first_s") / summary(through_cli, "first_s"), 1
            ),
        }
    )
    env_record = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    write_result(args.name, result, env_record)
    show(
        f"{table}\n\ndecode tokens/s: {result['decode_tokens_per_s']}\n"
        f"answers equal the library's: {result['answers_equal_library']}\n"
        f"concurrent: {concurrent}\nmemory: {memory}"
    )


def _memory(server: Server) -> dict[str, Any]:
    health = server.health()
    return {
        "rss_mib": round(server.rss_bytes() / 2**20, 1),
        "caches_loaded": len(health["loaded"]["caches"]),
        "cache_mib": round(health["loaded"]["cache_bytes"] / 2**20, 1),
    }


if __name__ == "__main__":
    main()
