"""Stable fingerprints of a model and a tokenizer, to tie saved artefacts to what built them.

A model's fingerprint covers its architecture config (RoPE scaling included) and a sample of its
weights rounded to bfloat16, so the same weights loaded in float32, bfloat16 or float16 share one
fingerprint (a cache converts exactly between those dtypes) while other weights do not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

# Config keys that describe how a model was loaded or saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "_attn_implementation",
    "_attn_implementation_internal",
    "attn_implementation",
    "quantization_config",
    "architectures",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "_commit_hash",
    "id2label",
    "label2id",
}

_SAMPLE_PER_TENSOR = 2048


def config_fingerprint(config: Any) -> str:
    """SHA-256 (hex, 16 chars) of the parts of a transformers config that change the maths."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    clean = {k: v for k, v in sorted(data.items()) if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps(clean, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model: its config plus a bfloat16-rounded sample of every weight tensor."""
    digest = hashlib.sha256(config_fingerprint(model.config).encode())  # type: ignore[attr-defined]
    for name, param in sorted(model.state_dict().items()):
        if not torch.is_floating_point(param):
            continue
        sample = param.detach().reshape(-1)[:_SAMPLE_PER_TENSOR]
        sample = sample.to(device="cpu", dtype=torch.bfloat16).to(torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of a tokenizer: its vocabulary, special tokens and chat template."""
    digest = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    digest.update(json.dumps(sorted(vocab.items())).encode())
    digest.update(json.dumps(getattr(tokenizer, "all_special_tokens", []), default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()[:16]
