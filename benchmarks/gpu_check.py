"""The GPU check's experiment: HOMER's compress against a full prefill at Llama-2-7B's shape.

    benchmarks/gpu_check.sh                 # on a CUDA machine: the gpu-marked tests, then this
    python -m benchmarks.gpu_check          # this alone: 8k, 16k, 32k, 64k tokens on cuda
    python -m benchmarks.gpu_check --tiny   # a tiny random Llama on the CPU: checks the script

The model has random weights in Llama-2-7B's exact shape (32 layers, hidden 4096, 32 heads
without GQA, intermediate 11008, vocabulary 32,000, 4,096 positions), built from a config on the
device (no download) in float16 (`benchmarks.memory.build`): honest for memory and time,
meaningless for answers. For each length, `homer` is `homer.compress` with default settings
(chunks of 2,048 tokens, a 2,048-token cache) and `full` is the plain prefill a model does
before its first token (`model(ids, use_cache=True, logits_to_keep=1)`); each then decodes 100
greedy tokens from the cache it left, timed at 20, 50 and 100 (EOS ignored).

Unlike benchmarks/memory.py, every measurement runs in this one process: loading a 7B model
eight times would not fit the check's time budget. On CUDA the allocator's counters make that
exact: before each measurement memory is freed and the peak counter reset, and the peak is read
above what is allocated then (the weights). On the CPU (`--tiny`) a process's resident peak
cannot be reset per measurement, so only times are reported there.

A measurement that runs out of device memory is recorded as `oom`; once `--budget` seconds have
passed the remaining ones are recorded as `skipped`. One table is printed; the records go to
`benchmarks/results/<name>.json` after every measurement.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Any

from benchmarks.report import markdown_table, write_result

LENGTHS = (8192, 16384, 32768, 65536)
TINY_LENGTHS = (1024, 2048, 4096)
NEW_TOKENS = (20, 50, 100)
METHODS = ("homer", "full")


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    method: str, length: int, model: Any, tokenizer: Any, device: str, counts: tuple[int, ...]
) -> dict[str, Any]:
    """One (method, length): seconds, peak memory above the weights (CUDA), decode times."""
    import torch

    from benchmarks.longtext import document, document_ids
    from benchmarks.memory import decode_times
    from homer import HomerConfig, compress
    from homer.adapter import output_cache

    record: dict[str, Any] = {"method": method, "length": length}
    cuda = device.startswith("cuda")
    _free(device)
    base = torch.cuda.memory_allocated() if cuda else 0
    began = time.perf_counter()
    with torch.inference_mode():
        if method == "homer":
            cache = compress(model, tokenizer, document(tokenizer, length), HomerConfig())
            _sync(device)
            record["seconds"] = round(time.perf_counter() - began, 3)
            record["document_tokens"] = cache.info.document_tokens
            record["cache_tokens"] = cache.length
            record["chunks"] = cache.info.num_chunks
            past = cache.to_dynamic_cache()
            position = cache.last_position + 1
            first = int(cache.last_logits.argmax())
            del cache
        else:
            ids = torch.tensor([document_ids(tokenizer, length)], device=device)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            _sync(device)
            record["seconds"] = round(time.perf_counter() - began, 3)
            record["document_tokens"] = record["cache_tokens"] = length
            past = output_cache(out)
            position = length
            first = int(out.logits[0, -1].argmax())
            del out, ids
    if cuda:
        record["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        held = sum(
            t.numel() * t.element_size()
            for layer in past.layers
            for t in (layer.keys, layer.values)
        )
        record["cache_gib"] = round(held / 2**30, 2)
    record["decode_s"] = decode_times(model, past, first, position, counts, lambda: _sync(device))
    record["status"] = "ok"
    return record


def table(records: list[dict[str, Any]], counts: tuple[int, ...]) -> str:
    """One markdown table: a row per (method, length)."""
    headers = [
        "method",
        "tokens",
        "cache",
        "time s",
        "peak GiB",
        *(f"decode {n} s" for n in counts),
    ]
    rows = []
    for r in records:
        if r.get("status") != "ok":
            rows.append(
                [r["method"], r["length"], r.get("status", "?"), *[""] * (len(headers) - 3)]
            )
            continue
        decode = r.get("decode_s", {})
        rows.append(
            [
                r["method"],
                r["document_tokens"],
                r["cache_tokens"],
                r["seconds"],
                r.get("peak_gib", "n/a"),
                *(decode.get(str(n), "-") for n in counts),
            ]
        )
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=list(NEW_TOKENS))
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for measurements")
    parser.add_argument("--name", default=None, help="result file name (benchmarks/results/)")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.memory import build
    from homer import HomerConfig
    from homer.calibration import calibrate

    shape = "tiny-llama" if args.tiny else "llama2-7b"
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here: run on a GPU machine, or pass --tiny")
    lengths = tuple(args.lengths or (TINY_LENGTHS if args.tiny else LENGTHS))
    counts = tuple(sorted(args.new_tokens))
    name = args.name or f"gpu_check_{shape}_{device.replace(':', '')}"
    # Calibration and everything homer saves go to a scratch home, never the user's.
    os.environ.setdefault("HOMER_HOME", tempfile.mkdtemp(prefix="homer-gpu-check-"))

    started = time.perf_counter()
    model, tokenizer = build(shape, device, None)
    setup: dict[str, Any] = {
        "shape": shape,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "dtype": str(model.dtype),
        "build_s": round(time.perf_counter() - started, 1),
    }
    if device.startswith("cuda"):
        setup["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    began = time.perf_counter()
    with torch.inference_mode():  # warm-up: kernels, cuBLAS handles; calibration (saved)
        model(input_ids=torch.ones(1, 256, dtype=torch.long, device=device), logits_to_keep=1)
        calibrate(model, tokenizer, HomerConfig())
    _sync(device)
    setup["calibrate_s"] = round(time.perf_counter() - began, 1)
    print(
        f"built {shape} on {setup['device_name']} in {setup['build_s']} s, calibrated in "
        f"{setup['calibrate_s']} s",
        flush=True,
    )

    records: list[dict[str, Any]] = []
    deadline = time.perf_counter() + args.budget
    for length in lengths:
        for method in METHODS:
            if time.perf_counter() > deadline:
                records.append({"method": method, "length": length, "status": "skipped"})
                continue
            try:
                record = measure(method, length, model, tokenizer, device, counts)
            except torch.cuda.OutOfMemoryError:
                record = {"method": method, "length": length, "status": "oom"}
            _free(device)
            records.append(record)
            print(
                f"{method} {length}: {record.get('status')} {record.get('seconds', '')} s "
                f"{record.get('peak_gib', '')} GiB",
                flush=True,
            )
            write_result(name, {"setup": setup, "records": records})
    setup["total_s"] = round(time.perf_counter() - started, 1)
    path = write_result(name, {"setup": setup, "records": records})
    print()
    print(
        f"HOMER vs full prefill, {shape} (random weights), {setup['device_name']}, "
        f"{setup['dtype']}:"
    )
    print(table(records, counts))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
