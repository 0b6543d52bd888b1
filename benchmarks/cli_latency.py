"""Time from Enter to the first visible output, and to the first answer token, of the CLI.

    python -m benchmarks.cli_latency --label after
    PYTHONPATH=/tmp/before python -m benchmarks.cli_latency --label before --code /tmp/before
    python -m benchmarks.cli_latency --table before after

Each command runs as a person runs it: in a fresh process (`python -m homer_cli`, from `--code`,
default this checkout), with stderr on a pseudo-terminal (so spinners, progress bars and notices
appear as on a screen) and stdout on a pipe that is read as it is written. Measured from the
moment the process is started ("Enter"):

- first visible output: the first byte on either stream;
- first answer token (`ask`): the first non-blank byte on stdout;
- done: the process's exit.

The steps, in one new `HOMER_HOME` per run (so the first step converts the embedded model and
calibrates it, as on a new machine): `ingest` of the bundled sample (the first run); `ingest` of
the same file again (reused); `ingest` of another document (a later run that compresses);
`ask` of a question about the sample, `--max-tokens 16`. Results go to
`benchmarks/results/cli_latency_<label>.json`; `--table` prints them side by side.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import selectors
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, load_tokenizer
from benchmarks.report import markdown_table, read_result, show, write_result

SAMPLE = ROOT / "examples" / "shakespeare-britannica-1911.txt"
QUESTION = "Who engraved the portrait of Shakespeare printed in the First Folio?"
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def run_cli(args: list[str], env: dict[str, str], code: Path) -> dict[str, Any]:
    """Run `python -m homer_cli ARGS` with stderr on a 120x40 pseudo-terminal; times in seconds."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    loadavg = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "homer_cli", *args],
        cwd=code,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(primary, selectors.EVENT_READ, "stderr")
    out, err = bytearray(), bytearray()
    first_visible = first_token = None
    while selector.get_map():
        for key, _ in selector.select(timeout=1.0):
            try:
                data = os.read(key.fd, 65536)
            except OSError:  # the terminal's other end closed
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                continue
            now = time.perf_counter() - started
            first_visible = first_visible if first_visible is not None else now
            if key.data == "stdout":
                if first_token is None and data.strip():
                    first_token = now
                out += data
            else:
                err += data
    proc.wait()
    done = time.perf_counter() - started
    os.close(primary)
    shown = _ANSI.sub(b"", bytes(err)).decode("utf-8", "replace")
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    return {
        "command": "homer " + " ".join(args),
        "exit_code": proc.returncode,
        "first_visible_s": round(first_visible, 2) if first_visible is not None else None,
        "first_stdout_s": round(first_token, 2) if first_token is not None else None,
        "done_s": round(done, 2),
        "loadavg_1m_at_start": round(loadavg, 2),
        "stdout": bytes(out).decode("utf-8", "replace").strip(),
        # What the screen showed on stderr: each distinct line once, in order (bars redraw).
        "stderr_lines": list(dict.fromkeys(lines))[:40],
    }


def other_document(path: Path, tokens: int) -> Path:
    from benchmarks.longtext import document

    path.write_text(document(load_tokenizer(), tokens), encoding="utf-8")
    return path


def cli_env(home: Path, code: Path) -> dict[str, str]:
    """The environment a measured command runs in: its own store, no server, `code` on the
    path, a colour terminal, and the model each cache names (no `HOMER_MODEL`)."""
    env = {
        **os.environ,
        "HOMER_HOME": str(home),
        "HOMER_SERVER": "off",
        "PYTHONPATH": str(code),
        "TERM": "xterm-256color",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("HOMER_MODEL", None)
    return env


def measure(label: str, code: Path, other_tokens: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"homer-cli-latency-{label}-"))
    other = other_document(home.parent / f"{home.name}-other.txt", other_tokens)
    env = cli_env(home, code)
    steps: dict[str, Any] = {}
    steps["ingest_first_run"] = run_cli(["ingest", str(SAMPLE)], env, code)
    print(json.dumps(steps["ingest_first_run"])[:600], file=sys.stderr)
    steps["ingest_again_reused"] = run_cli(["ingest", str(SAMPLE)], env, code)
    steps["ingest_later_new_document"] = run_cli(["ingest", str(other)], env, code)
    print(json.dumps(steps["ingest_later_new_document"])[:600], file=sys.stderr)
    name = steps["ingest_first_run"]["stdout"].splitlines()[-1]
    steps["ask"] = run_cli(["ask", QUESTION, "-c", name, "--max-tokens", "16"], env, code)
    print(json.dumps(steps["ask"])[:600], file=sys.stderr)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True
    ).stdout.strip()
    return {
        "label": label,
        "home": str(home),
        "code": str(code),
        "commit": commit,
        "other_document_tokens": other_tokens,
        "steps": steps,
    }


STEP_NAMES = {
    "ingest_first_run": "ingest, first run (new HOMER_HOME)",
    "ingest_again_reused": "ingest again (reused)",
    "ingest_later_new_document": "ingest, later run (new document)",
    "ask": "ask (--max-tokens 16)",
}


def table(labels: list[str]) -> str:
    results = [read_result(f"cli_latency_{label}") for label in labels]
    headers = [
        "step",
        *(f"{r['label']} ({r['commit']}): first output / first token / done" for r in results),
    ]
    rows = []
    for step, title in STEP_NAMES.items():
        row: list[Any] = [title]
        for r in results:
            s = r["steps"][step]
            token = f"{s['first_stdout_s']} s" if step == "ask" else "-"
            row.append(f"{s['first_visible_s']} s / {token} / {s['done_s']} s")
        rows.append(row)
    return markdown_table(headers, rows)


def interleaved_asks(labels: list[str], pairs: int) -> dict[str, Any]:
    """`ask` again `pairs` times per labelled run, alternating between them (so a change in the
    machine's load hits each alike), in each run's own HOMER_HOME and code. A label
    `RUN:OPTIONS` asks in run RUN with those options added (`after:--dtype bfloat16`)."""
    runs = {}
    for label in labels:
        run, _, extra = label.partition(":")
        result = read_result(f"cli_latency_{run}")
        homes = sorted(Path(tempfile.gettempdir()).glob(f"homer-cli-latency-{run}-*"))
        home = Path(result.get("home") or [h for h in homes if h.is_dir()][-1])
        code = Path(result["code"])
        name = result["steps"]["ingest_first_run"]["stdout"].splitlines()[-1]
        env = cli_env(home, code)
        ask = ["ask", QUESTION, "-c", name, "--max-tokens", "16", *extra.split()]
        runs[label] = (code, env, ask)
    asks: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for n in range(pairs):
        for label in labels if n % 2 == 0 else labels[::-1]:
            code, env, args = runs[label]
            asks[label].append(run_cli(args, env, code))
            print(json.dumps(asks[label][-1])[:300], file=sys.stderr)

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    summary = {
        label: {
            key: round(median([a[key] for a in runs_ if a[key] is not None]), 2)
            for key in ("first_visible_s", "first_stdout_s", "done_s")
        }
        for label, runs_ in asks.items()
    }
    return {"labels": labels, "pairs": pairs, "summary": summary, "asks": asks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose CLI is timed")
    parser.add_argument("--other-tokens", type=int, default=8192)
    parser.add_argument("--table", nargs="+", metavar="LABEL")
    parser.add_argument(
        "--interleave-asks", nargs="+", metavar="LABEL", help="ask again in these runs' homes"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--name", default="cli_latency_asks", help="result file of the asks")
    args = parser.parse_args()
    if args.interleave_asks:
        result = interleaved_asks(args.interleave_asks, args.pairs)
        result["command"] = " ".join(["python -m benchmarks.cli_latency", *sys.argv[1:]])
        print(write_result(args.name, result))
        return
    if args.table:
        show(table(args.table))
        return
    result = measure(args.label, args.code.resolve(), args.other_tokens)
    result["command"] = " ".join(["python -m benchmarks.cli_latency", *sys.argv[1:]])
    print(write_result(f"cli_latency_{args.label}", result))


if __name__ == "__main__":
    main()
