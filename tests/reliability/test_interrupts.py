"""SIGINT and SIGKILL at random moments of `homer ingest`: the store stays consistent.

Each trial runs the real CLI in a fresh process (forked from `tests.reliability.forkserver`, so
the trial does not pay ten seconds of imports) on the tiny model, waits for a randomly chosen
phase (start-up and model loading, compression, or the save, which the server slows down so a
random moment can land inside it), sleeps a random part of that phase and sends the signal. Half
the trials replace an existing cache with `--force`.

After every trial: every cache `homer list` shows loads and checks out, the cache being replaced
is still there (old or new, never neither), and an interrupted process said so in one line. At the
end, the next ingest works and leaves no work folder behind. Seeded: the same trials every run.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

from homer.store import Store
from tests.conftest import MAX_CHUNK
from tests.reliability.conftest import story
from tests.reliability.harness import ForkServer, assert_store_consistent, store_entries

TRIALS = 16
SEED = 5
# Seconds after a phase starts within which the signal lands (at most; about the phase's length).
# Start-up and compression are timed on the first ingest and the window is half of each: on a
# fast machine the tiny model's whole ingest takes less than these, so fixed windows let most
# signals come after the process had finished.
PHASES = {"start": 0.6, "compress": 0.8, "save": 0.15}
SLOW_SAVE = 0.025  # pause before each write, fsync and rename of a save (five or six of them)

#: Filled by the test; read by docs/RESULTS.md's author through `pytest -s`.
OUTCOMES: Counter[str] = Counter()


def _phase_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("@@phase")]


def test_random_interrupts_leave_a_consistent_store(
    forkserver: ForkServer, tiny_model_dir: Path, engine_home: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    env = {"HOMER_HOME": str(engine_home)}
    model = ["--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
    seed_doc = tmp_path / "book.txt"
    seed_doc.write_text(story(1), encoding="utf-8")
    started = time.monotonic()
    first = forkserver.start(
        ["ingest", str(seed_doc), *model, "--name", "book"], workdir=tmp_path, env=env
    )
    assert first.wait_phase("compress")
    compressing = time.monotonic()
    assert first.wait_phase("save")
    timed = {"start": compressing - started, "compress": time.monotonic() - compressing}
    phases = PHASES | {k: max(0.01, min(PHASES[k], 0.5 * v)) for k, v in timed.items()}
    assert forkserver.wait(first) == 0, first.stderr

    for trial in range(TRIALS):
        sig = signal.SIGINT if trial % 2 == 0 else signal.SIGKILL
        phase = rng.choice(list(PHASES))
        replace = rng.random() < 0.5
        doc = tmp_path / f"doc{trial}.txt"
        doc.write_text(story(100 + trial), encoding="utf-8")
        argv = ["ingest", str(doc), *model, *(["--name", "book", "--force"] if replace else [])]
        child = forkserver.start(
            argv, workdir=tmp_path, env=env, slow=SLOW_SAVE if phase == "save" else 0.0
        )
        reached = phase == "start" or child.wait_phase(phase)
        time.sleep(rng.uniform(0, phases[phase]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
        status = forkserver.wait(child)
        where = f"trial {trial}: {sig.name} in {phase} (reached={reached}), status {status}"
        lines = _phase_lines(child.stderr)
        if status == 0:
            OUTCOMES["finished before the signal"] += 1
            assert lines == [], (where, lines)
        elif sig == signal.SIGKILL:
            assert status == -signal.SIGKILL, where
            OUTCOMES[f"SIGKILL during {phase}"] += 1
        elif "@@phase cli" not in child.stderr:  # the harness had not yet called the CLI
            assert status == 130 and lines == [], (where, child.stderr)
            OUTCOMES["SIGINT before the CLI started"] += 1
        else:
            # 130 and one line from homer's handler, or 130 and silence from Typer's own when the
            # signal beat the command body (argument parsing).
            assert status == 130, (where, child.stderr)
            assert lines in ([], ["homer: interrupted"]), (where, child.stderr)
            OUTCOMES[f"SIGINT during {phase}"] += 1
        names = assert_store_consistent()
        assert "book" in names, where  # the cache being replaced is never lost

    last = tmp_path / "last.txt"
    last.write_text(story(999), encoding="utf-8")
    final = forkserver.start(
        ["ingest", str(last), *model, "--name", "last"], workdir=tmp_path, env=env
    )
    assert forkserver.wait(final) == 0, final.stderr
    assert "last" in assert_store_consistent()
    leftovers = [e for e in store_entries() if e.startswith((".tmp-", ".trash-", ".swap-"))]
    assert leftovers == []
    interrupted = sum(n for k, n in OUTCOMES.items() if k.startswith("SIG") and "before" not in k)
    print(f"\ninterrupt trials: {TRIALS}, interrupted mid-run: {interrupted}, {dict(OUTCOMES)}")
    assert interrupted >= TRIALS // 2, OUTCOMES  # the trials really did interrupt something
    assert any(k.endswith("during save") for k in OUTCOMES), OUTCOMES
    assert len(Store().names()) >= 2
