"""Digests of the caches `compress` builds, to prove a refactor changed no bit of them.

For each named rule (`benchmarks.variants`), on the embedded model and a natural-prose haystack
of `--length` tokens, it compresses the haystack without a memo, and a copy with one word changed
near the end (same token count, so the tree's chunks stay where they were) through a
`SubtreeMemo` already warmed on the plain haystack, so most subtrees come from the memo. Every
tensor of each cache (token ids, positions, every layer's keys and values, last logits) is
hashed with SHA-256. `--out` writes the digests; `--check` compares with a file
written before a change and exits 1 on any difference.

    python -m benchmarks.cache_identity --out /tmp/before.json     # on the old code
    python -m benchmarks.cache_identity --check /tmp/before.json   # on the new code
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load, natural_prose
from benchmarks.needles import haystack
from benchmarks.variants import homer_config


def edited(hay: str) -> str:
    """`hay` with its last " the " made " a " (one token for one, in the last chunk)."""
    at = hay.rindex(" the ")
    return hay[:at] + " a " + hay[at + len(" the ") :]


def digests(cache: Any) -> dict[str, str]:
    """SHA-256 of each tensor of a `HomerCache`, by name."""

    def sha(tensor: Any) -> str:
        return hashlib.sha256(tensor.contiguous().view(-1).view(dtype=_u8()).numpy()).hexdigest()

    parts = {
        "token_ids": sha(cache.token_ids),
        "positions": sha(cache.positions),
        "last_logits": sha(cache.last_logits),
    }
    for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        parts[f"keys.{i}"] = sha(k)
        parts[f"values.{i}"] = sha(v)
    return parts


def _u8() -> Any:
    import torch

    return torch.uint8


def run(rules: list[str], length: int) -> dict[str, Any]:
    from homer import compress
    from homer.tree import SubtreeMemo

    model, tokenizer = load()
    hay = haystack(tokenizer, natural_prose(), length)
    other = edited(hay)
    out: dict[str, Any] = {}
    for rule in rules:
        config = homer_config(rule)
        started = time.perf_counter()
        out[f"{rule}/no-memo"] = digests(compress(model, tokenizer, hay, config))
        memo = SubtreeMemo()
        compress(model, tokenizer, hay, config, memo=memo)
        out[f"{rule}/memo"] = digests(compress(model, tokenizer, other, config, memo=memo))
        out[f"{rule}/memo-hits"] = memo.hits
        print(f"{rule}: {time.perf_counter() - started:.0f} s, memo hits {memo.hits}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="+", default=["default", "paper"])
    parser.add_argument("--length", type=int, default=16000, help="haystack tokens")
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--check", type=Path, help="compare with digests written before")
    args = parser.parse_args()
    result = run(args.rules, args.length)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.check:
        before = json.loads(args.check.read_text())
        differ = [
            f"{case}: {part}"
            for case, parts in before.items()
            if isinstance(parts, dict)
            for part, digest in parts.items()
            if result.get(case, {}).get(part) != digest
        ]
        cases = [case for case in before if isinstance(before[case], dict)]
        if differ:
            print(f"DIFFERENT in {len(differ)} tensors: {differ[:10]}")
            sys.exit(1)
        print(f"bit-identical: {len(cases)} caches ({', '.join(cases)}), every tensor")


if __name__ == "__main__":
    main()
