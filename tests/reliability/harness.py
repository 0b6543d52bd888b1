"""Helpers shared by the reliability suite: run the CLI, check its one-line errors, inspect a store.

`invoke` goes through Typer's CliRunner in this process (cheap); `ForkServer` runs the CLI in
real, separately signalled processes (see `tests.reliability.forkserver`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from homer.store import Store
from homer_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
_runner = CliRunner()


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    """Run `homer ARGS` in this process and return the result (stdout and stderr separate)."""
    return _runner.invoke(app, list(args), input=input)


def one_line_error(result: Result, *needles: str, code: int = 1) -> str:
    """Assert `result` failed with exit `code` and exactly one `homer: ` line holding `needles`."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    err = result.stderr
    assert err.startswith("homer: "), err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def store_entries(store: Store | None = None) -> list[str]:
    """Every entry of the store folder except the lock folder (work folders included)."""
    root = (store or Store()).root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


def assert_nothing_written() -> None:
    """No cache and no work folder in this test's store."""
    assert store_entries() == []


def assert_store_consistent(store: Store | None = None) -> list[str]:
    """Every listed cache loads and checks out, and `homer list` shows just those; return them."""
    store = store or Store()
    names = store.names()
    for name in names:
        cache, record = store.load(name)
        assert cache.length == record.cache_tokens
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(row["name"] for row in json.loads(listed.stdout)) == names
    return names


@dataclass
class Child:
    """A CLI process started by the fork server, with its own output folder."""

    pid: int
    folder: Path

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    def wait_phase(self, phase: str, timeout: float = 60.0) -> bool:
        """Wait until the child reports `phase` (True) or has finished without it (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr if (self.folder / "stderr").exists() else ""
            if f"@@phase {phase}\n" in text:
                return True
            if "@@phase done\n" in text:
                return False
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            time.sleep(0.005)
        raise TimeoutError(f"child {self.pid} never reached {phase!r}: {self.stderr[-2000:]}")


class ForkServer:
    """Client of `python -m tests.reliability.forkserver` (started once per test session)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.forkserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert "ready" in self._read()
        self._count = 0

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(
        self,
        argv: list[str],
        *,
        workdir: Path,
        env: dict[str, str],
        slow: float = 0.0,
        call: tuple[str, str, list[Any]] | None = None,
    ) -> Child:
        """Start `homer ARGV` in a forked child; its outputs go to a fresh folder under workdir.
        With `call` (module, function, args) the child runs that function instead."""
        self._count += 1
        folder = workdir / f"child-{self._count}"
        folder.mkdir(parents=True)
        request = {"op": "run", "argv": argv, "env": env, "dir": str(folder), "slow": slow}
        if call is not None:
            request["call"] = list(call)
        answer = self._ask(request)
        return Child(pid=int(answer["pid"]), folder=folder)

    def wait(self, child: Child) -> int:
        """Exit status of `child` (negative: the signal that killed it)."""
        return int(self._ask({"op": "wait", "pid": child.pid})["status"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
