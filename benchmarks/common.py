"""Shared pieces of the benchmarks: loading the model, recording the environment, writing results.

Every result file records the model, the settings, library versions, the machine and the date,
so a number can always be traced to how it was measured.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "img"


def environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, machine and date, for the record."""
    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **(extra or {}),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write `benchmarks/results/<name>.json` atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load(model: str | None = None, dtype: str | None = None, **overrides: Any) -> tuple[Any, Any]:
    """The model and tokenizer through homer's own loader (embedded SmolLM2 by default).

    `overrides` are set on the model config before use (e.g. `rope_parameters` for RoPE
    scaling baselines), which is how a user would configure them in `config.json`.
    """
    from homer.models import load_model

    loaded, tokenizer = load_model(model, dtype=dtype)
    if overrides:
        loaded = reload_with(loaded, **overrides)
    return loaded, tokenizer


def reload_with(model: Any, **overrides: Any) -> Any:
    """A copy of `model` whose config has `overrides` (sharing no state with the original)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    for key, value in overrides.items():
        setattr(config, key, value)
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()
