"""Running `homer serve` as a real process for tests: start on an ephemeral loopback port, wait
for its "listening on" line, stop it with a signal and collect its exit code and stderr."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """`python -m homer_cli serve --port 0 ARGS` with `HOMER_HOME=home`."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, "HOMER_HOME": str(home), "HOMER_SERVER": "off"}
        environment.pop("HOMER_API_KEY", None)
        # One torch thread: the tests' machine runs other processes, and two threads spinning
        # against them made each token ~50x slower.
        environment["OMP_NUM_THREADS"] = "1"
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "homer_cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # the process ended

    def wait_ready(self, timeout: float = 60) -> str:
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("homer serve did not start:\n" + "".join(self.lines))
        return self.url

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit by itself; its stderr is then complete."""
        code = self.process.wait(timeout)
        self._drainer.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig`, wait for the exit, return the exit code (killed after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drainer.join(timeout)
        return self.process.returncode
