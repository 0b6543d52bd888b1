"""homer: read documents far longer than a model's context window.

HOMER (Hierarchical cOntext MERging; Song et al., ICLR 2024, arXiv 2404.10308) compresses a long
document into a fixed-length kv-cache that later prompts continue from. The public API, from the
use-cases down:

    import homer
    model = homer.load_model()                   # the embedded model, or a ModelChoice
    done = homer.ingest("book.pdf", model)       # compressed and saved (or reused) in the store
    opened = homer.open_cache(model, done.name)
    for piece in homer.ask(model, opened.cache, "Who betrays the captain?"):
        ...

    # the engine alone, no store: compress(model, tokenizer, text, HomerConfig()) -> HomerCache,
    # generate(model, tokenizer, cache, question) -> a stream of text
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names resolve lazily (PEP 562), so `import homer.errors` or `import homer.paths` stays light
# and a CLI's `--help` never waits for torch.
_EXPORTS = {
    "CacheInfo": "homer.cache",
    "HomerCache": "homer.cache",
    "Calibration": "homer.calibration",
    "calibrate": "homer.calibration",
    "compress": "homer.compression",
    "HomerConfig": "homer.config",
    "ResolvedConfig": "homer.config",
    "CacheError": "homer.errors",
    "CacheMismatchError": "homer.errors",
    "DocumentError": "homer.errors",
    "HomerError": "homer.errors",
    "ModelLoadError": "homer.errors",
    "UnsupportedModelError": "homer.errors",
    "ContextOverflowError": "homer.generation",
    "GenerationStats": "homer.generation",
    "GenerationStream": "homer.generation",
    "generate": "homer.generation",
    "ProgressEvent": "homer.tree",
    "Turn": "homer.prompts",
    "Citation": "homer.grounding",
    "Grounding": "homer.grounding",
    "GroundedStream": "homer.grounding",
    "WarmPool": "homer.warm",
    "PoolSettings": "homer.warm",
    "CacheExistsError": "homer.errors",
    "Ingested": "homer.service",
    "LoadedModel": "homer.service",
    "ModelChoice": "homer.service",
    "OpenedCache": "homer.service",
    "Sampling": "homer.service",
    "ask": "homer.service",
    "ingest": "homer.service",
    "load_model": "homer.service",
    "open_cache": "homer.service",
    "Store": "homer.store",
    "CacheRecord": "homer.store",
}

if TYPE_CHECKING:
    from homer.cache import CacheInfo, HomerCache
    from homer.calibration import Calibration, calibrate
    from homer.compression import compress
    from homer.config import HomerConfig, ResolvedConfig
    from homer.errors import (
        CacheError,
        CacheExistsError,
        CacheMismatchError,
        DocumentError,
        HomerError,
        ModelLoadError,
        UnsupportedModelError,
    )
    from homer.generation import (
        ContextOverflowError,
        GenerationStats,
        GenerationStream,
        generate,
    )
    from homer.grounding import Citation, GroundedStream, Grounding
    from homer.prompts import Turn
    from homer.service import (
        Ingested,
        LoadedModel,
        ModelChoice,
        OpenedCache,
        Sampling,
        ask,
        ingest,
        load_model,
        open_cache,
    )
    from homer.store import CacheRecord, Store
    from homer.tree import ProgressEvent
    from homer.warm import PoolSettings, WarmPool


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'homer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CacheError",
    "CacheExistsError",
    "CacheInfo",
    "CacheMismatchError",
    "CacheRecord",
    "Calibration",
    "Citation",
    "ContextOverflowError",
    "DocumentError",
    "GenerationStats",
    "GenerationStream",
    "GroundedStream",
    "Grounding",
    "HomerCache",
    "HomerConfig",
    "HomerError",
    "Ingested",
    "LoadedModel",
    "ModelChoice",
    "ModelLoadError",
    "OpenedCache",
    "PoolSettings",
    "ProgressEvent",
    "ResolvedConfig",
    "Sampling",
    "Store",
    "Turn",
    "UnsupportedModelError",
    "WarmPool",
    "ask",
    "calibrate",
    "compress",
    "generate",
    "ingest",
    "load_model",
    "open_cache",
]
__version__ = "0.1.0"
