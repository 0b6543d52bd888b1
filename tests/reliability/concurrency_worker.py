"""The processes of the concurrency storm (`test_concurrency_storm.py`), run in forked children
(`ForkServer.start(call=...)`): clients that list, show, load and ask, and ingesters that add
new caches and replace the stable ones with `--force`'s code path, all on one store.

Each worker runs for `seconds`, times every operation, and writes a JSON report to `out`: the
operations done by kind, the slowest of each, and every violation seen (a stable or
already-seen cache missing from a listing, a cache that does not load, an error).
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

#: Caches that exist from the start and are only ever replaced (never removed).
STABLE = ("book", "stable1", "stable2")


def _report(out: str, data: dict[str, Any]) -> None:
    tmp = Path(out + ".part")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(out)


class _Clock:
    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.slowest: dict[str, float] = {}

    def time(self, kind: str, started: float) -> None:
        took = time.monotonic() - started
        self.ops[kind] += 1
        self.slowest[kind] = max(self.slowest.get(kind, 0.0), took)


def client(home: str, model_dir: str, seed: int, seconds: float, out: str) -> None:
    """List (`homer list --json` in this process), show, load and ask until `seconds` pass."""
    from typer.testing import CliRunner

    from homer.service import Sampling, ask, load_model, open_cache
    from homer.store import Store
    from homer_cli.main import app

    rng = random.Random(seed)
    store = Store(Path(home) / "caches")
    runner = CliRunner()
    model = load_model(model_dir)
    clock = _Clock()
    seen: set[str] = set(STABLE)
    violations: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = rng.choice(["list", "list", "show", "load", "ask"])
        started = time.monotonic()
        try:
            if kind == "list":
                result = runner.invoke(app, ["list", "--json"])
                if result.exit_code != 0:
                    violations.append(f"list failed: {result.output[-300:]}")
                    continue
                names = {row["name"] for row in json.loads(result.stdout)}
                missing = seen - names
                if missing:
                    violations.append(f"list dropped {sorted(missing)}")
                seen |= names
            else:
                name = rng.choice(sorted(seen))
                if kind == "show":
                    record = store.record(name)
                    if record.name != name:
                        violations.append(f"show {name} gave {record.name}")
                elif kind == "load":
                    cache, record = store.load(name)
                    if cache.length != record.cache_tokens:
                        violations.append(f"{name}: {cache.length} tokens, meta says otherwise")
                else:
                    opened = open_cache(model, name, store=store)
                    text = "".join(ask(model, opened.cache, "The passkey?", Sampling(2)))
                    if not isinstance(text, str):
                        violations.append(f"{name}: no answer")
        except Exception as exc:
            violations.append(f"{kind}: {type(exc).__name__}: {exc}"[:500])
        finally:
            clock.time(kind, started)
    _report(out, {"ops": clock.ops, "slowest": clock.slowest, "violations": violations})


def ingester(
    home: str, model_dir: str, workdir: str, index: int, seed: int, seconds: float, out: str
) -> None:
    """Ingest new documents under new names, and replace the stable caches (`force=True`)."""
    from homer.config import HomerConfig
    from homer.documents import load_document
    from homer.service import ingest, load_model
    from tests.conftest import MAX_CHUNK
    from tests.reliability.conftest import story

    rng = random.Random(seed)
    model = load_model(model_dir)
    config = HomerConfig(max_chunk_len=int(MAX_CHUNK))
    clock = _Clock()
    written: list[tuple[str, str]] = []  # (name, document source) of each finished ingest
    violations: list[str] = []
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        number += 1
        replace = rng.random() < 0.5
        name = rng.choice(STABLE) if replace else f"w{index}-{number}"
        path = Path(workdir) / f"w{index}-{number}.txt"
        path.write_text(story(10_000 * (index + 1) + number, words=40), encoding="utf-8")
        kind = "force" if replace else "new"
        started = time.monotonic()
        try:
            done = ingest(load_document(path), model, name=name, config=config, force=replace)
            written.append((done.name, path.name))
        except Exception:
            violations.append(f"{kind} {name}: {traceback.format_exc(limit=3)}"[-800:])
        finally:
            clock.time(kind, started)
    _report(
        out,
        {"ops": clock.ops, "slowest": clock.slowest, "violations": violations, "written": written},
    )
