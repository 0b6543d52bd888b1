"""Concurrency storm: 8 clients and 4 ingest processes on one store for a bounded time.

Clients list (`homer list --json`), show, load and ask; ingesters add new caches and replace the
three stable ones (`book`, `stable1`, `stable2`) with `--force`'s code path, all at once (see
`tests.reliability.concurrency_worker`). Held: no listing ever drops a cache that exists (the
stable ones while they are being replaced, and every cache a client has seen), no load or
answer fails, every operation finishes within `OP_BOUND` seconds (no deadlock), and at the end
every cache loads, each holds a document that was written under its name (nothing mixed), and
the store holds no work folder.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from homer.store import Store
from tests.reliability.concurrency_worker import STABLE
from tests.reliability.harness import ForkServer, assert_store_consistent, store_entries

CLIENTS = 8
INGESTERS = 4
SECONDS = 25.0
OP_BOUND = 60.0  # seconds any one operation may take (an ingest may wait on another's lock)


def test_concurrency_storm(
    forkserver: ForkServer, book: Path, tiny_model_dir: Path, engine_home: Path, tmp_path: Path
) -> None:
    store = Store()
    for name in STABLE[1:]:
        store.copy("book", name)
    env = {"HOMER_HOME": str(engine_home), "HOMER_SERVER": "off"}
    work = tmp_path / "docs"
    work.mkdir()
    home, model = str(engine_home), str(tiny_model_dir)
    workers = []
    for i in range(CLIENTS + INGESTERS):
        out = str(tmp_path / f"report-{i}.json")
        if i < CLIENTS:
            call = (
                "tests.reliability.concurrency_worker",
                "client",
                [home, model, i, SECONDS, out],
            )
        else:
            args = [home, model, str(work), i - CLIENTS, 100 + i, SECONDS, out]
            call = ("tests.reliability.concurrency_worker", "ingester", args)
        child = forkserver.start([], workdir=tmp_path, env=env, call=call)
        workers.append((child, Path(out)))
    deadline = time.monotonic() + SECONDS + OP_BOUND + 60  # start-up, the last operations
    for child, out in workers:
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists(), f"a worker never finished (deadlock?): {child.stderr[-2000:]}"
        assert forkserver.wait(child) == 0, child.stderr[-2000:]

    ops: Counter[str] = Counter()
    slowest: dict[str, float] = {}
    written: dict[str, set[str]] = {}
    for _, out in workers:
        report = json.loads(out.read_text())
        assert report["violations"] == [], report["violations"][:5]
        ops.update(report["ops"])
        for kind, took in report["slowest"].items():
            slowest[kind] = max(slowest.get(kind, 0.0), took)
        for name, source in report.get("written", []):
            written.setdefault(name, set()).add(source)
    print(f"\nconcurrency storm: {dict(ops)}, slowest {slowest}")
    assert all(took < OP_BOUND for took in slowest.values()), slowest
    assert ops["list"] >= 20 and ops["force"] >= 4 and ops["new"] >= 4, ops

    names = assert_store_consistent()
    assert set(written) | set(STABLE) <= set(names)
    for name, sources in written.items():
        source = store.record(name).source
        assert source in sources or (name in STABLE and source == "book.txt"), (name, source)
    assert [e for e in store_entries() if e.startswith((".tmp-", ".swap-", ".trash-"))] == []
