"""homer: read documents far longer than a model's context window.

HOMER (Hierarchical cOntext MERging; Song et al., ICLR 2024, arXiv 2404.10308) compresses a long
document into a fixed-length kv-cache that later prompts continue from. The public API:

    from homer import HomerConfig, HomerCache, compress, calibrate, generate
    cache = compress(model, tokenizer, text, config=HomerConfig(), focus=None)
    for piece in generate(model, tokenizer, cache, "Who betrays the captain?"):
        ...
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
    "GenerationStats": "homer.generation",
    "GenerationStream": "homer.generation",
    "generate": "homer.generation",
    "ProgressEvent": "homer.tree",
}

if TYPE_CHECKING:
    from homer.cache import CacheInfo, HomerCache
    from homer.calibration import Calibration, calibrate
    from homer.compression import compress
    from homer.config import HomerConfig, ResolvedConfig
    from homer.errors import (
        CacheError,
        CacheMismatchError,
        DocumentError,
        HomerError,
        ModelLoadError,
        UnsupportedModelError,
    )
    from homer.generation import GenerationStats, GenerationStream, generate
    from homer.tree import ProgressEvent


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'homer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CacheError",
    "CacheInfo",
    "CacheMismatchError",
    "Calibration",
    "DocumentError",
    "GenerationStats",
    "GenerationStream",
    "HomerCache",
    "HomerConfig",
    "HomerError",
    "ModelLoadError",
    "ProgressEvent",
    "ResolvedConfig",
    "UnsupportedModelError",
    "calibrate",
    "compress",
    "generate",
]
__version__ = "0.1.0"
