"""The typed error family of homer.

Every error a user can cause or meet derives from `HomerError`, so the CLI can turn any of them
into a one-line message with a non-zero exit code. Messages name the bad value and what is wrong
with it; errors a front end can advise on carry structured fields (the cache's name, the file at
fault, what was saved and what is in use), and the front end adds the fix in its own terms (the
CLI names its flags and commands; see `homer_cli.errors`).
"""

from __future__ import annotations

import errno as errno_codes
from pathlib import Path


class HomerError(Exception):
    """Base class of every error homer raises on purpose."""


class UnsupportedModelError(HomerError):
    """The model's architecture cannot be driven layer by layer by homer."""


class DocumentError(HomerError):
    """The input document cannot be read or holds no usable text."""


class DocumentTooLargeError(DocumentError):
    """The document is larger than a reading limit (`homer.documents.ReadLimits`).

    Attributes:
        source: the document's display name.
        measure: `"bytes"`, `"pages"` or `"tokens"`.
        limit: the limit in that measure.
    """

    def __init__(self, source: str, measure: str, limit: int, found: str) -> None:
        super().__init__(f"{source}: {found}, over the limit of {limit:,} {measure}")
        self.source = source
        self.measure = measure
        self.limit = limit


class CacheError(HomerError):
    """A saved cache is missing, damaged, or belongs to another model or setting."""


class CacheNotFoundError(CacheError):
    """No cache of that name exists.

    Attributes:
        name: the name asked for.
        available: the names that do exist, sorted.
    """

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(available) if available else "none"
        super().__init__(f"no cache named {name!r} (existing: {listing})")
        self.name = name
        self.available = available


class CacheExistsError(CacheError):
    """A cache is already saved under the name a new one was to take.

    Attributes:
        name: the name asked for.
        source: where the cache saved under it came from, when known.
    """

    def __init__(self, name: str, source: str | None = None) -> None:
        origin = f" (from {source!r})" if source is not None else ""
        super().__init__(f"a cache named {name!r} already exists{origin}")
        self.name = name
        self.source = source


class CacheDamagedError(CacheError):
    """A saved cache cannot be used as it is: a file is missing, damaged, or not homer's.

    Attributes:
        path: the file (or folder) at fault.
        problem: what is wrong with it.
        name: the cache's name in its store (None when not known).
    """

    def __init__(self, path: Path | str, problem: str, name: str | None = None) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
        self.name = name


class CacheUnreadableError(CacheDamagedError):
    """A saved cache's files exist but the system refuses to read them (permissions)."""


class CacheVersionError(CacheError):
    """A cache was written in a format version newer than this homer reads.

    Attributes:
        path: its metadata file.
        version: the version it was written in.
        supported: the newest version this homer reads.
        name: the cache's name in its store (None when not known).
    """

    def __init__(self, path: Path | str, version: int, supported: int, name: str | None = None):
        super().__init__(
            f"{path}: cache format version {version} is newer than this homer reads ({supported})"
        )
        self.path = Path(path)
        self.version = version
        self.supported = supported
        self.name = name


class CacheMismatchError(CacheError):
    """A cache was built with another model or tokenizer than the one in use.

    Attributes:
        name: the cache.
        field: what differs: `"model"` (the weights' fingerprint) or `"tokenizer"`.
        saved / current: the fingerprint the cache was built with / the one in use.
        model_id: the model the cache was built with.
        using: the model in use as the caller named it (None when not given).
        dtype: the dtype the cache was built in.
    """

    def __init__(
        self,
        name: str,
        field: str,
        *,
        saved: str,
        current: str,
        model_id: str,
        using: str | None,
        dtype: str,
    ) -> None:
        self.name = name
        self.field = field
        self.saved = saved
        self.current = current
        self.model_id = model_id
        self.using = using
        self.dtype = dtype
        in_use = using or "the model in use"
        if field == "tokenizer":
            message = (
                f"cache {name!r} was built with the tokenizer of {model_id!r} (fingerprint "
                f"{saved}), not the tokenizer of {in_use} (fingerprint {current})"
            )
        elif self.same_model_id:
            message = (
                f"cache {name!r} was built with {model_id!r} in {dtype}, and the weights loaded "
                f"now differ (fingerprint {current}, not {saved})"
            )
        else:
            message = (
                f"cache {name!r} was built with model {model_id!r} (fingerprint {saved}), "
                f"not {in_use} (fingerprint {current})"
            )
        super().__init__(message)

    @property
    def same_model_id(self) -> bool:
        """The model in use has the cache's model id but other weights: most often the same
        checkpoint rounded to another dtype."""
        return self.field == "model" and self.using == self.model_id


class CacheDtypeError(CacheError):
    """Converting a cache to the dtype in use would overflow (finite values turn infinite).

    Attributes:
        name: the cache.
        saved: the dtype it was saved in (asking in that dtype works).
        requested: the dtype it could not be converted to.
    """

    def __init__(self, name: str, saved: str, requested: str) -> None:
        super().__init__(f"cache {name!r} holds {saved} values too large for {requested}")
        self.name = name
        self.saved = saved
        self.requested = requested


class StoreAccessError(CacheError):
    """The system refused an operation on the cache store (full disk, read-only, not a folder).

    Attributes:
        action: what was being done, e.g. `"save the cache"`.
        root: the store's folder.
        errno: the system's error number (`errno.ENOSPC`, ...), or None.
        reason: the system's words for it, or what is in the way (`ENOTDIR`: the file that is
            not a folder; `ELOOP`: the symbolic link that was not followed).
    """

    def __init__(self, action: str, root: Path | str, errno: int | None, reason: str) -> None:
        self.action = action
        self.root = Path(root)
        self.errno = errno
        self.reason = reason
        if self.no_space:
            message = f"could not {action}: no space left on the device holding {root}"
        elif self.not_a_folder or errno == errno_codes.ELOOP:
            message = f"could not {action}: {reason}"
        elif self.denied:
            message = f"could not {action}: {reason} in {root}"
        else:
            message = f"could not {action} in {root}: {reason}"
        super().__init__(message)

    @property
    def not_a_folder(self) -> bool:
        """The store's folder, or one above it, is a file."""
        return self.errno == errno_codes.ENOTDIR

    @property
    def no_space(self) -> bool:
        return self.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT)

    @property
    def denied(self) -> bool:
        """The store cannot be written here (permissions, a read-only mount)."""
        return self.errno in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EROFS)


class ModelLoadError(HomerError):
    """The model could not be found or loaded."""
