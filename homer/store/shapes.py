"""Whether a loaded cache has the shape the model that will read it makes.

The store checks a cache against its own metadata (`format.read_cache`); the metadata is not
signed, so a cache whose tensors and metadata were both rewritten (a forged `kv_shape`, with a
fresh checksum) passes that. Its keys must still fit the model: as many layers, key/value heads
and head size as the model's config says, or attention would fail deep inside the model.
Config fields a model does not have are not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from homer.errors import CacheDamagedError

if TYPE_CHECKING:
    from homer.cache import HomerCache


def _int(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_fits_model(cache: HomerCache, config: Any, path: Path, name: str | None) -> None:
    """Refuse `cache` (keys `[batch, kv_heads, length, head_dim]` per layer) when its layers,
    heads or head size differ from what `config` (a transformers config) makes.

    Raises:
        CacheDamagedError: naming the tensor file and both shapes.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = _int(text, "num_attention_heads")
    kv_heads = _int(text, "num_key_value_heads") or heads
    head_dim = _int(text, "head_dim")
    hidden = _int(text, "hidden_size")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    layers = _int(text, "num_hidden_layers")
    keys = tuple(cache.keys[0].shape)
    expected = {"layers": layers, "key/value heads": kv_heads, "head size": head_dim}
    found = {"layers": cache.num_layers, "key/value heads": keys[1], "head size": keys[-1]}
    wrong = [k for k, v in expected.items() if v is not None and found[k] != v]
    if len(keys) != 4 or wrong:
        said = ", ".join(f"{k} {found[k]} (the model: {expected[k]})" for k in wrong)
        raise CacheDamagedError(path, f"does not fit the model: {said or keys}", name)
