"""How every benchmark reports: result files with their record, tables, figures.

A result is `benchmarks/results/<name>.json`: an `environment` block (the exact command, git
commit, library versions, machine, CPU count, date, plus what the benchmark adds) followed by the
benchmark's own fields. Superseded results live in `benchmarks/results/archive/`; `read_result`
finds a name in either place, so saved runs can be pooled or re-scored after they are archived.
Figures go to `docs/img/`. Knows nothing of models or HOMER.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

RESULTS = ROOT / "benchmarks" / "results"
ARCHIVE = RESULTS / "archive"
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


def write_json(name: str, data: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Write `<folder>/<name>.json` (the results folder by default) atomically; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def write_result(name: str, data: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write `benchmarks/results/<name>.json`: the `environment` (with `extra` in it), then
    `data`'s fields. Benchmarks call it after every record, so a stopped run keeps what it did."""
    return write_json(name, {"environment": environment(extra), **data})


def result_path(name: str) -> Path:
    """Where the saved result `name` is: `benchmarks/results/`, else its `archive/`."""
    for folder in (RESULTS, ARCHIVE):
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no saved result {name!r}: neither {(RESULTS / name).relative_to(ROOT)}.json "
        f"nor {(ARCHIVE / name).relative_to(ROOT)}.json exists"
    )


def read_result(name: str) -> dict[str, Any]:
    """The saved result `name` (see `result_path`)."""
    data: dict[str, Any] = json.loads(result_path(name).read_text())
    return data


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def method_table(
    methods: Sequence[str],
    columns: Sequence[Any],
    column_header: Callable[[Any], str],
    cell: Callable[[str, Any], str | None],
) -> str:
    """A markdown table with a row per method and a column per size (length, context...):
    `cell(method, column)`, or `-` where it gives None (not measured)."""
    rows = [[name, *(cell(name, column) or "-" for column in columns)] for name in methods]
    return markdown_table(["method", *(column_header(c) for c in columns)], rows)


def rate(right: int, total: int) -> str:
    """`right` of `total` as a share and a count: `75% (15/20)`."""
    return f"{right / total:.0%} ({right}/{total})"


def pyplot() -> Any:
    """`matplotlib.pyplot` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, filename: str) -> str:
    """Save a matplotlib figure as `docs/img/<filename>`; return its path relative to the repo."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / filename
    fig.savefig(path, dpi=120)
    return str(path.relative_to(ROOT))


def show(text: str, figure: str | None = None, label: str = "plot") -> None:
    """Print a finished result's table(s), then where its figure went."""
    print(text)
    if figure is not None:
        print(f"{label}: {figure}")
