"""The kill storm, longer than CI runs it: N trials (default 500) of SIGKILL and SIGINT at random
moments of `homer ingest`, `ingest --force` over an existing name, a batch ingest of a folder
and (with `--gguf`) an ingest that converts a tiny GGUF first, on the tiny random model of
`tests/tiny.py` (see `tests.reliability.storm` for the trials and what is checked after each).
Three SIGKILL for every SIGINT, as in CI.

Failures are counted, not raised: the result says how many store checks held and how many did
not, with the first messages. Writes `benchmarks/results/kill_storm.json`.

    python -m benchmarks.kill_storm --trials 500 [--gguf]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.report import write_result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--name", default="kill_storm", help="result file name")
    parser.add_argument("--gguf", action="store_true", help="add GGUF-converting ingests")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="homer-kill-storm-") as tmp:
        root = Path(tmp)
        home = root / "home"
        os.environ["HOMER_HOME"] = str(home)  # the storm's in-process `homer list` reads it
        os.environ["HOMER_SERVER"] = "off"
        from typer.testing import CliRunner

        from homer_cli.main import app
        from tests.conftest import MAX_CHUNK
        from tests.reliability.harness import ForkServer
        from tests.reliability.storm import Storm
        from tests.tiny import make_tiny_model_dir, write_tiny_gguf

        model_dir = make_tiny_model_dir(root / "model", arch="llama")
        calibrated = CliRunner().invoke(
            app, ["calibrate", "--model", str(model_dir), "--max-chunk", MAX_CHUNK]
        )
        assert calibrated.exit_code == 0, calibrated.output
        gguf = write_tiny_gguf(root / "tiny-llama.gguf")[0] if args.gguf else None
        kills = round(args.trials * 3 / 4)
        server = ForkServer()
        try:
            storm = Storm(
                server, model_dir, home, root / "work", seed=args.seed, strict=False, gguf=gguf
            )
            result = storm.run(kills, args.trials - kills)
        finally:
            server.close()
    data = result.to_dict()
    data["sigkill_trials"], data["sigint_trials"] = kills, args.trials - kills
    path = write_result(args.name, data)
    print(f"{data['trials']} trials: {data['outcomes']}")
    print(f"store checks held {data['checks_held']}, did not {data['checks_failed']}; {path}")
    if data["checks_failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
