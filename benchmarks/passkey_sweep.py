"""Passkey retrieval under several `HomerConfig` variants at one length: a quick setting sweep.

    python -m benchmarks.passkey_sweep 32000 0.1,0.3,0.5,0.7,0.9 'w11={"warmup_layers":11}' \
        'w15={"warmup_layers":15}'

Each variant is `NAME=JSON`, the JSON being `HomerConfig` keyword arguments (plus `"focus": true`
for query-aware). Every variant sees the same haystacks and keys (seed 7), one trial per depth,
with the prompt of `benchmarks.passkey`. Prints one line per trial and a total per variant, and
writes `benchmarks/results/<name>.json`. It screens settings; the 20-trial comparison belongs in
`benchmarks.passkey`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from benchmarks.common import load
from benchmarks.passkey import ask_homer, haystack
from benchmarks.report import write_result
from benchmarks.variants import variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("length", type=int, help="document tokens")
    parser.add_argument("depths", help="comma-separated needle depths, e.g. 0.1,0.5,0.9")
    parser.add_argument(
        "variants",
        nargs="+",
        help='NAME=JSON of HomerConfig sizes, "focus" and "variant" (benchmarks.variants), '
        'e.g. w15={"warmup_layers":15} or p={"variant":"paper"}',
    )
    parser.add_argument("--name", default=None, help="result name (default: passkey_sweep_<len>)")
    args = parser.parse_args()

    from homer import HomerConfig
    from homer.tree import SubtreeMemo

    depths = [float(x) for x in args.depths.split(",")]
    variants: dict[str, dict[str, Any]] = {}
    for item in args.variants:
        name, _, spec = item.partition("=")
        variants[name] = json.loads(spec or "{}")
    model, tokenizer = load()
    rng = random.Random(7)
    keys = [rng.randint(10000, 99999) for _ in depths]
    records: list[dict[str, Any]] = []
    out = args.name or f"passkey_sweep_{args.length}"
    for name, settings in variants.items():
        settings = dict(settings)
        focus = bool(settings.pop("focus", False))
        chosen = variant(str(settings.pop("variant", "default")))
        memo = SubtreeMemo(capacity=24)
        for depth, key in zip(depths, keys, strict=True):
            text = haystack(tokenizer, args.length, depth, key)
            began = time.perf_counter()
            config = HomerConfig(pruning=chosen.pruning, **settings)
            answer, _ = ask_homer(
                model, tokenizer, text, config, focus, memo, ablations=chosen.ablations
            )
            record = {
                "variant": name,
                "settings": settings,
                "focus": focus,
                "length": args.length,
                "depth": depth,
                "key": key,
                "answer": answer,
                "correct": str(key) in answer,
                "seconds": round(time.perf_counter() - began, 1),
            }
            records.append(record)
            print(
                f"{name} {args.length} d={depth:.2f} {'OK' if record['correct'] else 'no'} "
                f"{record['seconds']}s {answer!r}",
                flush=True,
            )
            write_result(out, {"records": records})
        hits = [r["correct"] for r in records if r["variant"] == name]
        print(f"== {name} {args.length}: {sum(hits)}/{len(hits)}", flush=True)


if __name__ == "__main__":
    main()
