"""A 100 MB text file is read in bounded memory: near twice its size, never several copies.

Reading happens in a separate process so its peak resident memory (VmHWM) is its own. The
bound is 2N + 48 MB for an N-byte ASCII file: the decoded blocks, then the one joined string.
Tokenizing is the engine's business (`homer.compression`); see docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.harness import ROOT

SIZE = 100 * 1024 * 1024

# VmHWM (this process image's peak), not ru_maxrss: Linux carries ru_maxrss across execve, so a
# child of a large pytest process would report pytest's own size.
_MEASURE = """
import json, sys
def status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
from homer.documents import ReadLimits, load_document
before = status_mb("VmRSS")
doc = load_document(sys.argv[1], limits=ReadLimits(max_bytes=0, max_tokens=0))  # over defaults
peak = status_mb("VmHWM")
print(json.dumps({"before": before, "peak": peak, "chars": len(doc.text), "sha": doc.sha256}))
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.txt"
    line = ("The captain sailed across the sea with his brother and a crew of ten. " * 20) + "\n"
    block = (line * (1024 * 1024 // len(line) + 1))[: 1024 * 1024].encode()
    with path.open("wb") as fh:
        for _ in range(SIZE // len(block)):
            fh.write(block)
    return path


def _measure(args: list[str], stdin: Path | None = None) -> dict[str, float]:
    with (stdin or Path(os.devnull)).open("rb") as fh:
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, *args],
            cwd=ROOT,
            stdin=fh,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_reading_100mb_stays_near_twice_its_size(big_file: Path, via: str) -> None:
    size_mb = big_file.stat().st_size / 2**20
    stats = _measure([str(big_file)]) if via == "file" else _measure(["-"], stdin=big_file)
    assert stats["chars"] == big_file.stat().st_size
    grew = stats["peak"] - stats["before"]
    assert grew < 2 * size_mb + 48, f"reading {size_mb:.0f} MB took {grew:.0f} MB"
