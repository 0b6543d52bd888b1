"""The kill storm in CI: 60 SIGKILL and 20 SIGINT trials against `ingest`, `ingest --force` over
an existing name, a batch ingest of a folder and an ingest that converts a GGUF model first, at
random moments over each command's measured duration and inside its save (see
`tests.reliability.storm` for what is checked after each).

Kept to about a minute on two cores: short documents (most a single chunk, some a small merge
tree) on the tiny model, one fork server. `benchmarks/kill_storm.py` runs the same storm longer.
"""

from __future__ import annotations

from pathlib import Path

from tests.reliability.harness import ForkServer
from tests.reliability.storm import Storm
from tests.tiny import write_tiny_gguf

KILLS = 60
INTERRUPTS = 20


def test_kill_storm(
    forkserver: ForkServer, tiny_model_dir: Path, engine_home: Path, tmp_path: Path
) -> None:
    gguf, _ = write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    work = tmp_path / "work"
    storm = Storm(
        forkserver, tiny_model_dir, engine_home, work, seed=24, gguf=gguf, verify_every=40
    )
    result = storm.run(KILLS, INTERRUPTS)
    print(f"\nkill storm: {result.to_dict()}")
    assert result.checks_failed == 0, result.failures
    assert sum(result.trials.values()) == KILLS + INTERRUPTS
    # The signals really landed mid-run (not all after the process had finished)...
    assert result.outcomes["killed"] >= KILLS // 2, result.outcomes
    assert result.outcomes["interrupted (exit 130)"] >= INTERRUPTS // 3, result.outcomes
    # ...and every kind of command and aim was tried.
    kinds = {key.split()[0] for key in result.trials}
    aims = {key.split()[2] for key in result.trials}
    assert kinds == {"ingest", "force", "batch", "gguf"}, result.trials
    assert aims == {"save", "spread"}, result.trials
