"""The kill storm: SIGKILL and SIGINT at random moments of real `homer ingest` processes.

Shared by the CI test (`test_kill_storm.py`, about 80 trials) and the benchmark
(`benchmarks/kill_storm.py`, 500 or more). Three kinds of command run on the tiny model, each a
real CLI process forked from `tests.reliability.forkserver`:

- `ingest`: a new document (a short one, or one long enough for a real merge tree);
- `force`: `ingest --name book --force`, replacing the cache `book`;
- `batch`: `ingest FOLDER` holding two new documents (one cache each);
- `gguf` (when a GGUF file is given): `ingest --model FILE.gguf` with the model's converted
  folder removed first, so every trial converts the GGUF again.

Each kind is timed once uninterrupted. A trial then sends its signal either at a moment drawn
uniformly over that kind's measured duration ("spread"), or inside the save (its writes, fsyncs
and renames slowed down so the moment can land anywhere in it: "save").

After every trial (`Storm.check`): every listed cache loads and answers a question, the folder
holds no cache folder that is not listed (nothing half-written), `homer list` agrees with the
store and warns of nothing but a restored replacement, `book` is still there (old or new), and
the work folders of dead processes are swept by the store's own sweep, and every converted
GGUF folder is complete (it holds the marker written last). Every `verify_every` trials, and at
the end, an uninterrupted ingest (of each kind of model) must succeed and leave no work folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homer.store import Store
from tests.conftest import MAX_CHUNK
from tests.reliability.conftest import story
from tests.reliability.harness import Child, ForkServer, invoke

KINDS = ("ingest", "force", "batch")
GGUF_DONE = ".homer-converted"  # homer.models: written last into a finished conversion
SLOW_SAVE = 0.02  # seconds before each write, fsync and rename of a save aimed at
WORK_PREFIXES = (".tmp-", ".trash-", ".swap-")


@dataclass
class StormResult:
    """Counts of a storm: trials by kind, signal, aim and what the process did, and the store
    checks that held or did not (with the first few failures' messages)."""

    trials: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    checks_held: int = 0
    checks_failed: int = 0
    failures: list[str] = field(default_factory=list)
    answers: int = 0
    verify_ingests: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": sum(self.trials.values()),
            "by_kind_signal_aim": dict(sorted(self.trials.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "checks_held": self.checks_held,
            "checks_failed": self.checks_failed,
            "failures": self.failures[:20],
            "answers_checked": self.answers,
            "verify_ingests": self.verify_ingests,
            "measured_seconds": {k: round(v, 3) for k, v in self.timings.items()},
            "wall_seconds": round(self.seconds, 1),
        }


class Storm:
    """One store under fire. `run` raises on the first failed check when `strict`."""

    def __init__(
        self,
        server: ForkServer,
        model_dir: Path,
        home: Path,
        workdir: Path,
        *,
        seed: int = 24,
        strict: bool = True,
        verify_every: int = 20,
        keep: int = 1,
        gguf: Path | None = None,
    ) -> None:
        self.server = server
        self.model = ["--model", str(model_dir), "--max-chunk", MAX_CHUNK]
        self.env = {"HOMER_HOME": str(home), "HOMER_SERVER": "off"}
        self.home = home
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.strict = strict
        self.verify_every = verify_every
        self.keep = keep  # caches kept besides `book`, so each check stays cheap
        self.result = StormResult()
        self._docs = 0
        self._loaded: dict[str, Any] = {}
        self.gguf = gguf
        self.kinds = (*KINDS, "gguf") if gguf is not None else KINDS
        self.models = home / "models"
        self._answered: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ documents and commands

    def _doc(self, folder: Path | None = None) -> Path:
        self._docs += 1
        words = 40 if self.rng.random() < 0.7 else 90  # 90 words: a merge tree of a few chunks
        path = (folder or self.workdir) / f"doc{self._docs}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(story(1000 + self._docs, words=words), encoding="utf-8")
        return path

    def _argv(self, kind: str) -> list[str]:
        if kind == "ingest":
            return ["ingest", str(self._doc()), *self.model]
        if kind == "force":
            return ["ingest", str(self._doc()), *self.model, "--name", "book", "--force"]
        if kind == "gguf":
            for done in self.models.glob("gguf-*"):  # convert again: the phase under fire
                if done.is_dir():
                    shutil.rmtree(done)
            return ["ingest", str(self._doc()), "--model", str(self.gguf), "--max-chunk", MAX_CHUNK]
        folder = self.workdir / f"batch{self._docs}"
        self._doc(folder)
        self._doc(folder)
        return ["ingest", str(folder), *self.model]

    def _start(self, kind: str, slow: float = 0.0) -> Child:
        return self.server.start(self._argv(kind), workdir=self.workdir, env=self.env, slow=slow)

    # ------------------------------------------------------------------ the storm

    def prepare(self) -> None:
        """Save `book`, then time each kind once, uninterrupted (the spread of its signals)."""
        first = self._start("ingest")
        assert self.server.wait(first) == 0, first.stderr
        name = first.stdout.strip().splitlines()[-1]
        Store(self.home / "caches").copy(name, "book")
        if self.gguf is not None:  # calibrate the GGUF's model once, untimed
            warm = self._start("gguf")
            assert self.server.wait(warm) == 0, warm.stderr
        for kind in self.kinds:
            started = time.monotonic()
            child = self._start(kind)
            status = self.server.wait(child)
            assert status == 0, (kind, child.stderr)
            self.result.timings[kind] = time.monotonic() - started
        self._check("prepare")

    def trial(self, number: int, sig: signal.Signals) -> None:
        kind = self.kinds[number % len(self.kinds)]
        aim = "save" if self.rng.random() < 1 / 3 else "spread"
        self.result.trials[f"{kind} {sig.name} {aim}"] += 1
        child = self._start(kind, slow=SLOW_SAVE if aim == "save" else 0.0)
        started = time.monotonic()
        if aim == "save":
            child.wait_phase("save", timeout=120)
            time.sleep(self.rng.uniform(0, 6 * SLOW_SAVE))
        else:
            moment = self.rng.uniform(0, self.result.timings[kind])
            time.sleep(max(0.0, moment - (time.monotonic() - started)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
        status = self.server.wait(child)
        where = f"trial {number}: {kind} {sig.name} {aim}, status {status}"
        self.result.outcomes[self._outcome(child, sig, status, where)] += 1
        checking = time.monotonic()
        self._check(where)
        self.result.timings["checks (total)"] = (
            self.result.timings.get("checks (total)", 0.0) + time.monotonic() - checking
        )
        if self.verify_every and (number + 1) % self.verify_every == 0:
            self.verify()

    def _outcome(self, child: Child, sig: signal.Signals, status: int, where: str) -> str:
        lines = [ln for ln in child.stderr.splitlines() if ln and not ln.startswith("@@phase")]
        if status == 0:
            self._expect(lines == [], f"{where}: finished with output {lines}")
            return "finished before the signal"
        if sig == signal.SIGKILL:
            self._expect(status == -signal.SIGKILL, f"{where}: not killed")
            return "killed"
        self._expect(status == 130, f"{where}: SIGINT gave {status}: {lines}")
        self._expect(lines in ([], ["homer: interrupted"]), f"{where}: SIGINT said {lines}")
        return "interrupted (exit 130)"

    def verify(self) -> None:
        """An uninterrupted ingest (and GGUF conversion) succeeds and leaves no work folder."""
        for kind in ("ingest", "gguf") if self.gguf is not None else ("ingest",):
            child = self._start(kind)
            status = self.server.wait(child)
            self.result.verify_ingests += 1
            self._expect(status == 0, f"verify {kind} failed ({status}): {child.stderr[-500:]}")
        caches = self.home / "caches"
        left = [e.name for e in caches.iterdir() if e.name.startswith(WORK_PREFIXES)]
        if self.models.is_dir():  # a dead conversion's `.gguf-*` work folder, swept by the next
            left += [e.name for e in self.models.iterdir() if e.is_dir() and e.name[0] == "."]
        self._expect(left == [], f"work folders left after a clean ingest: {left}")

    # ------------------------------------------------------------------ checks

    def _expect(self, ok: bool, message: str) -> None:
        if ok:
            return
        self.result.checks_failed += 1
        self.result.failures.append(message)
        if self.strict:
            raise AssertionError(message)

    def _model(self, model_id: str) -> Any:
        """The model a cache was built with, loaded once."""
        if model_id not in self._loaded:
            from homer.service import load_model

            self._loaded[model_id] = load_model(model_id)
        return self._loaded[model_id]

    def _check(self, where: str) -> None:
        """The store after a trial: see the module docstring."""
        from homer.service import Sampling, ask, open_cache

        store = Store(self.home / "caches")
        failed_before = self.result.checks_failed
        listed = invoke("list", "--json")
        self._expect(listed.exit_code == 0, f"{where}: list failed: {listed.output}")
        warnings = [ln for ln in listed.stderr.splitlines() if ln and "restored cache" not in ln]
        self._expect(warnings == [], f"{where}: list warned {warnings}")
        rows = json.loads(listed.stdout) if listed.exit_code == 0 else []
        names = store.names()
        self._expect(sorted(r["name"] for r in rows) == names, f"{where}: list != store {names}")
        self._expect("book" in names, f"{where}: book lost ({names})")
        folders = sorted(
            p.name for p in store.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        self._expect(folders == names, f"{where}: unlisted cache folders {folders} vs {names}")
        for name in names:
            try:
                model = self._model(store.record(name).model_id)
                opened = open_cache(model, name, store=store)
                seen = (name, opened.record.created)
                if seen in self._answered:  # loaded again above; answered when it was new
                    continue
                answer = "".join(ask(model, opened.cache, "The passkey?", Sampling(2)))
                self._answered.add(seen)
                self.result.answers += 1
                self._expect(isinstance(answer, str), f"{where}: {name} gave no answer")
            except Exception as exc:  # any failure to load or answer is what this storm seeks
                self._expect(False, f"{where}: {name} failed: {type(exc).__name__}: {exc}")
        if self.models.is_dir():
            converted = [p for p in self.models.glob("gguf-*") if p.is_dir()]
            partial = [p.name for p in converted if not (p / GGUF_DONE).exists()]
            self._expect(partial == [], f"{where}: converted GGUF folders without marker {partial}")
        store._sweep()  # what the next save does first
        left = [p.name for p in store.root.iterdir() if p.name.startswith(WORK_PREFIXES)]
        self._expect(left == [], f"{where}: the sweep left {left}")
        if self.result.checks_failed == failed_before:
            self.result.checks_held += 1
        for name in [n for n in names if n != "book"][: max(0, len(names) - 1 - self.keep)]:
            store.remove(name)  # keep the store small: each check reads every cache

    def run(self, kills: int, interrupts: int) -> StormResult:
        """`prepare`, then `kills` SIGKILL and `interrupts` SIGINT trials, interleaved."""
        started = time.monotonic()
        self.prepare()
        signals = [signal.SIGKILL] * kills + [signal.SIGINT] * interrupts
        self.rng.shuffle(signals)
        for number, sig in enumerate(signals):
            self.trial(number, sig)
        self.verify()
        self.result.seconds = time.monotonic() - started
        return self.result
