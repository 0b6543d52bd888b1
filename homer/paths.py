"""Where homer keeps things on disk.

`HOMER_HOME`, when set, moves everything (tests point it at a temp dir). Otherwise caches of
documents live in the platform's user cache dir, and converted models and calibration biases in
its user data dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "homer"


def _home_override() -> Path | None:
    value = os.environ.get("HOMER_HOME")
    return Path(value).expanduser() if value else None


def store_dir() -> Path:
    """Saved document caches."""
    home = _home_override()
    return home / "caches" if home else Path(platformdirs.user_cache_dir(APP)) / "caches"


def models_dir() -> Path:
    """Models converted once for fast loading (the embedded GGUF as safetensors)."""
    home = _home_override()
    return home / "models" if home else Path(platformdirs.user_data_dir(APP)) / "models"


def calibration_dir() -> Path:
    """Per-model calibration biases."""
    home = _home_override()
    return home / "calibration" if home else Path(platformdirs.user_data_dir(APP)) / "calibration"
