"""The kvpress side of benchmarks/peers: runs in kvpress's own venv (benchmarks/peers/setup.sh),
never in homer's, and imports nothing of homer.

    benchmarks/data/peers-venv/bin/python benchmarks/peers/kvpress_side.py JOB.json OUT.json

JOB.json (written by the driver, `python -m benchmarks.peers`):
    {"model": folder, "dtype": "bfloat16", "threads": 2,
     "runs": [{"id": ..., "method": "snapkv", "ratio": 0.875,
               "context_ids": [...], "question_ids": [...], "max_new_tokens": 24}, ...]}

For each run, the press compresses the context ids during prefill and the question ids are
answered greedily from the compressed cache, by kvpress's own pipeline code
(`KVPressTextGenerationPipeline._forward`: prefill under the press, then `generate_answer`). The
driver tokenizes once, so every method reads the very same token ids; the pipeline's own chat
templating (`preprocess`) is bypassed for that reason only. OUT.json gets one record per run,
written after each, so a stopped job keeps what it did.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def make_press(method: str, ratio: float) -> Any:
    """The kvpress press for a method name (None: the plain model, no press)."""
    from kvpress import (
        ExpectedAttentionPress,
        KeyRerotationPress,
        KnormPress,
        KVzipPress,
        SnapKVPress,
        StreamingLLMPress,
    )

    if method == "plain":
        return None
    presses = {
        "snapkv": lambda: SnapKVPress(compression_ratio=ratio),
        "expected_attention": lambda: ExpectedAttentionPress(compression_ratio=ratio),
        "streaming_llm": lambda: StreamingLLMPress(compression_ratio=ratio),
        "knorm": lambda: KnormPress(compression_ratio=ratio),
        "rerotated_expected_attention": lambda: KeyRerotationPress(
            press=ExpectedAttentionPress(compression_ratio=ratio)
        ),
        "rerotated_snapkv": lambda: KeyRerotationPress(press=SnapKVPress(compression_ratio=ratio)),
        "kvzip": lambda: KVzipPress(compression_ratio=ratio),
    }
    return presses[method]()


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    import kvpress  # noqa: F401  (registers the "kv-press-text-generation" pipeline)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    torch.set_num_threads(int(job.get("threads", 2)))
    dtype = getattr(torch, job.get("dtype", "bfloat16"))
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    from importlib.metadata import version

    versions = {
        "kvpress": version("kvpress"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": str(model.config._attn_implementation),
    }
    records: list[dict[str, Any]] = []
    for run in job["runs"]:
        press = make_press(run["method"], float(run["ratio"]))
        context = torch.tensor([run["context_ids"]], dtype=torch.long)
        question = torch.tensor([run["question_ids"]], dtype=torch.long)
        began = time.perf_counter()
        with torch.inference_mode():
            answers = pipe._forward(
                {"context_ids": context, "questions_ids": [question]},
                max_new_tokens=int(run["max_new_tokens"]),
                press=press,
            )
        seconds = time.perf_counter() - began
        records.append(
            {
                "id": run["id"],
                "method": run["method"],
                "ratio": run["ratio"],
                "answer": answers[0],
                "seconds": round(seconds, 2),
                "context_tokens": int(context.shape[1]),
            }
        )
        print(f"{run['method']:30s} {run['ratio']:.4f} {seconds:6.1f}s {answers[0]!r}", flush=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"versions": versions, "records": records}, indent=1))
        tmp.replace(out)


if __name__ == "__main__":
    main()
