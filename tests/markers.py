"""Test markers shared across test modules."""

from __future__ import annotations

import pytest


def engine_available() -> bool:
    """Whether the compression engine (`homer.compress`) can be imported yet."""
    try:
        from homer import compress  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


needs_engine = pytest.mark.skipif(
    not engine_available(), reason="needs the engine: homer.compress is not importable yet"
)
