"""The typed error family of homer.

Every error a user can cause or meet derives from `HomerError`, so the CLI can turn any of them
into a one-line message with a non-zero exit code. Messages name the bad value and the fix.
"""

from __future__ import annotations


class HomerError(Exception):
    """Base class of every error homer raises on purpose."""


class UnsupportedModelError(HomerError):
    """The model's architecture cannot be driven layer by layer by homer."""


class DocumentError(HomerError):
    """The input document cannot be read or holds no usable text."""


class CacheError(HomerError):
    """A saved cache is missing, damaged, or belongs to another model or setting."""


class CacheMismatchError(CacheError):
    """A cache was built with another model, tokenizer or setting than the one in use."""


class ModelLoadError(HomerError):
    """The model could not be found or loaded."""
