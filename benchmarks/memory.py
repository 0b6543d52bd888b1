"""Peak memory and wall time of HOMER's `compress` versus a plain full prefill, by document length.

    python -m benchmarks.memory                                   # embedded SmolLM2, 8k..64k, CPU
    python -m benchmarks.memory --shape tiny-llama --name memory_tiny   # random small Llama, fast
    python -m benchmarks.memory --device cuda --shape llama2-7b --name memory_llama2-7b_cuda

Every (method, length) runs in a fresh Python process (this module with a hidden `--child`
flag), so one measurement's allocations cannot hide or inflate another's. In the child:

1. load or build the model, then measure the baseline: on CPU the resident set after loading
   (the kernel's peak counter is reset there through `/proc/self/clear_refs`, so loading
   transients do not count); on CUDA `torch.cuda.memory_allocated()`;
2. run the method on the document and time it: `homer` is `homer.compress` (calibration is built
   once by the parent beforehand and loaded from disk here); `full` is
   `model(input_ids, use_cache=True, logits_to_keep=1)`, the prefill a plain model does before
   its first token;
3. report the peak above the baseline: CPU `getrusage(RUSAGE_SELF).ru_maxrss`, CUDA
   `torch.cuda.max_memory_allocated()`;
4. then decode 20, 50 and 100 greedy tokens from the cache the method left (HOMER's fixed-length
   cache, or the full one) and time them; EOS is ignored so every run decodes the same count.

A measurement that runs past `--timeout` is killed; its result says so, with the peak resident
memory it had reached (CPU) and how many decoder layers the prefill had finished.

Shapes: `smollm2` is the embedded SmolLM2-135M-Instruct with its real weights. `tiny-llama`
(8 layers, hidden 256) and `llama2-7b` (Llama-2-7B's sizes: 32 layers, hidden 4096, 32 heads,
intermediate 11008, vocabulary 32,000, 4,096 positions) have seeded random weights and a
byte-level BPE tokenizer trained on the same prose (so ids fit the vocabulary): honest for memory
and time, meaningless for answers. Random shapes are float16 on CUDA and float32 on CPU;
`--dtype` overrides.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.report import markdown_table, pyplot, save_figure, show, write_result

METHODS = ("homer", "full")
SHAPES = ("smollm2", "tiny-llama", "llama2-7b")
QUESTION = "What is this document about?"
SEED = 0


@dataclass(frozen=True)
class Job:
    """One measurement, passed to the child process as JSON."""

    method: str
    length: int
    shape: str
    device: str
    dtype: str | None
    new_tokens: tuple[int, ...]
    positions: str | None = None  # "paper": Ablations(compact_positions=False); None: default
    sibling_budget: str | None = None  # SpanPruning(sibling_budget=...); None: default


# ---------------------------------------------------------------------------------------------
# Models


def shape_config(shape: str, vocab_size: int) -> Any:
    """A LlamaConfig for a random-weight shape (`tiny-llama` or `llama2-7b`)."""
    from transformers import LlamaConfig

    sizes: dict[str, dict[str, Any]] = {
        "tiny-llama": {
            "num_hidden_layers": 8,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 688,
            "max_position_embeddings": 2048,
        },
        "llama2-7b": {
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "intermediate_size": 11008,
            "max_position_embeddings": 4096,
        },
    }
    if shape not in sizes:
        raise ValueError(f"unknown random shape {shape!r}; choose from {sorted(sizes)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        **sizes[shape],
    )
    config._attn_implementation = "sdpa"
    return config


def trained_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (ids < `vocab_size`) trained in memory on the benchmark prose."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from benchmarks.longtext import prose

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([prose()], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build(shape: str, device: str, dtype: str | None) -> tuple[Any, Any]:
    """`(model, tokenizer)` for `shape` on `device`, in eval mode."""
    import torch

    if shape == "smollm2":
        from homer.models import load_model

        return load_model(None, device=device, dtype=dtype)
    from transformers import AutoModelForCausalLM

    vocab = 32000 if shape == "llama2-7b" else 4096
    tokenizer = trained_tokenizer(vocab)
    config = shape_config(shape, vocab)
    torch_dtype = getattr(torch, dtype or ("float16" if device.startswith("cuda") else "float32"))
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------------
# The child: one measurement


def _rss_now_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Meter:
    """Memory baseline and peak, in MiB, for the CPU (resident set) or a CUDA device."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            self.peak_reset = True
        else:
            self.peak_reset = _reset_peak_rss()
            self.base = _rss_now_kb() / 1024
            if not self.peak_reset:  # fall back to the peak so far (loading transients count)
                self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def peak(self) -> float:
        """Peak memory since the baseline, above it (MiB)."""
        import torch

        self.sync()
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base


def _progress(message: str) -> None:
    print(f"progress {time.perf_counter():.3f} {message}", file=sys.stderr, flush=True)


def decode_times(
    model: Any, past: Any, first: int, position: int, counts: tuple[int, ...], sync: Any
) -> dict[str, float]:
    """Seconds to decode max(`counts`) greedy tokens after `first`, read off at each count."""
    import torch

    from homer.adapter import cache_kwargs, output_cache

    times: dict[str, float] = {}
    if not counts:
        return times
    device = next(model.parameters()).device
    token = first
    began = time.perf_counter()
    with torch.inference_mode():
        for step in range(1, max(counts) + 1):
            out = model(
                input_ids=torch.tensor([[token]], device=device),
                position_ids=torch.tensor([[position]], device=device),
                use_cache=True,
                **cache_kwargs(model, past),
            )
            past = output_cache(out)
            token = int(out.logits[0, -1].argmax())
            position += 1
            if step in counts:
                sync()
                times[str(step)] = round(time.perf_counter() - began, 4)
    return times


def child(job: Job) -> dict[str, Any]:
    """Run one measurement in this process; returns its record."""
    import torch

    from homer.adapter import output_cache

    started = time.perf_counter()
    model, tokenizer = build(job.shape, job.device, job.dtype)
    load_s = time.perf_counter() - started
    from benchmarks.longtext import document, document_ids

    ids = document_ids(tokenizer, job.length)
    text = document(tokenizer, job.length) if job.method == "homer" else ""
    if job.method == "full":  # so a killed prefill can say how far it got
        for index, layer in enumerate(model.model.layers):
            layer.register_forward_hook(
                lambda *_, i=index: _progress(f"layer {i + 1}/{len(model.model.layers)}")
            )
    meter = Meter(job.device)
    _progress(f"baseline {meter.base:.1f} MiB")  # lets a killed run still report its peak
    record: dict[str, Any] = {**asdict(job), "load_s": round(load_s, 2)}
    record["baseline_mib"] = round(meter.base, 1)
    record["peak_reset"] = meter.peak_reset
    began = time.perf_counter()
    with torch.inference_mode():
        if job.method == "homer":
            from homer import HomerConfig, compress
            from homer.config import Ablations
            from homer.pruning import SpanPruning

            budget: Any = job.sibling_budget or "halves"
            config = HomerConfig(pruning=SpanPruning(sibling_budget=budget))
            ablations = Ablations(compact_positions=job.positions in (None, "compact"))
            cache = compress(model, tokenizer, text, config, ablations=ablations)
            meter.sync()
            seconds = time.perf_counter() - began
            past = cache.to_dynamic_cache()
            position = cache.last_position + 1
            first = int(cache.last_logits.argmax())
            record["document_tokens"] = cache.info.document_tokens
            record["cache_tokens"] = cache.length
        else:
            input_ids = torch.tensor([ids], device=model.device)
            out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
            meter.sync()
            seconds = time.perf_counter() - began
            past = output_cache(out)
            position = len(ids)
            first = int(out.logits[0, -1].argmax())
            record["document_tokens"] = len(ids)
            record["cache_tokens"] = len(ids)
            del out
    record["seconds"] = round(seconds, 2)
    record["peak_mib"] = round(meter.peak(), 1)
    if job.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    record["decode_s"] = decode_times(model, past, first, position, job.new_tokens, meter.sync)
    record["status"] = "ok"
    return record


# ---------------------------------------------------------------------------------------------
# The parent: one child per measurement


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(job: Job, timeout: float, log: Path) -> dict[str, Any]:
    """Run `job` in a fresh process; kill it after `timeout` seconds and say how far it got."""
    command = [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(asdict(job))]
    began = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        hwm: float | None = None
        while proc.poll() is None:
            hwm = _vm_hwm_mib(proc.pid) or hwm
            if time.perf_counter() - began > timeout:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.5)
        stdout = proc.stdout.read() if proc.stdout else ""
    wall = round(time.perf_counter() - began, 1)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "process_wall_s": wall}
    progress = [line for line in log.read_text().splitlines() if line.startswith("progress ")]
    tail = log.read_text().strip().splitlines()[-3:]
    base = [float(p.split()[3]) for p in progress if p.split()[2:3] == ["baseline"]]
    return {
        **asdict(job),
        "status": "timeout" if wall > timeout else f"failed (exit {proc.returncode})",
        "process_wall_s": wall,
        "process_peak_rss_mib": round(hwm, 1) if hwm else None,
        # Peak above the loaded model so far (CPU): what the run had reached when it was stopped.
        "peak_so_far_mib": round(hwm - base[0], 1) if hwm and base else None,
        "last_progress": progress[-1].split(" ", 2)[-1] if progress else None,
        "stderr_tail": tail,
    }


def calibrate_once(shape: str, device: str, dtype: str | None) -> float:
    """Build (or load) the calibration bias once, so no child measures it; returns seconds."""
    from homer import calibrate

    began = time.perf_counter()
    model, tokenizer = build(shape, device, dtype)
    calibrate(model, tokenizer)
    del model
    gc.collect()
    return time.perf_counter() - began


def plot(records: list[dict[str, Any]], name: str, title: str) -> str:
    """Peak memory and wall time against length, one line per method; returns the PNG path."""
    plt = pyplot()
    fig, (mem, sec) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method, style in (("homer", "o-"), ("full", "s--")):
        done = [r for r in records if r["method"] == method and r["status"] == "ok"]
        xs = [r["length"] / 1024 for r in done]
        mem.plot(xs, [r["peak_mib"] for r in done], style, label=method)
        sec.plot(xs, [r["seconds"] for r in done], style, label=method)
        cut = [r for r in records if r["method"] == method and r["status"] != "ok"]
        for r in cut:
            sec.annotate(
                f"{method} {r['length'] // 1024}k: {r['status']}",
                (r["length"] / 1024, r["process_wall_s"]),
                fontsize=7,
            )
            sec.plot([r["length"] / 1024], [r["process_wall_s"]], "x", color="red")
    for ax, label in ((mem, "peak memory above the loaded model (MiB)"), (sec, "wall time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document tokens (k)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    mem.set_ylim(bottom=0)  # growth is read against zero, not against the smallest value
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, f"{name}.png")


def table(records: list[dict[str, Any]], lengths: list[int], counts: tuple[int, ...]) -> str:
    def cell(method: str, length: int) -> dict[str, Any] | None:
        found = [r for r in records if r["method"] == method and r["length"] == length]
        return found[0] if found else None

    rows = []
    for length in lengths:
        row: list[Any] = [f"{length // 1024}k"]
        for method in METHODS:
            r = cell(method, length)
            if r is None:
                row += ["-", "-"]
            elif r["status"] == "ok":
                row += [f"{r['peak_mib']:.0f}", f"{r['seconds']:.1f}"]
            else:
                reached = r.get("peak_so_far_mib")
                row += [
                    f"≥{reached:.0f} (stopped)" if reached else "-",
                    f"{r['status']} at {r['process_wall_s']:.0f} s ({r.get('last_progress')})",
                ]
        for method in METHODS:
            r = cell(method, length)
            for n in counts:
                value = (r or {}).get("decode_s", {}).get(str(n))
                row.append(f"{value:.2f}" if value is not None else "-")
        rows.append(row)
    headers = ["length", "homer peak MiB", "homer s", "full peak MiB", "full s"]
    headers += [f"{m} decode {n} s" for m in METHODS for n in counts]
    return markdown_table(headers, rows)


def growth(records: list[dict[str, Any]], method: str) -> float | None:
    """Peak memory at the longest finished length over the shortest, for `method`."""
    done = sorted(
        (r for r in records if r["method"] == method and r["status"] == "ok"),
        key=lambda r: r["length"],
    )
    if len(done) < 2 or done[0]["peak_mib"] <= 0:
        return None
    return float(done[-1]["peak_mib"] / done[0]["peak_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--shape", default="smollm2", choices=SHAPES)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32/float16/bfloat16 (default: auto)")
    parser.add_argument("--new-tokens", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument(
        "--full-timeout", type=float, default=None, help="seconds per full prefill (default: same)"
    )
    parser.add_argument("--name", default=None, help="result name (default: memory_<shape>)")
    parser.add_argument(
        "--positions",
        default=None,
        choices=["compact", "paper"],
        help="final positions of HOMER's cache (default: the library's)",
    )
    parser.add_argument(
        "--sibling-budget",
        default=None,
        choices=["halves", "shared"],
        help="how merging siblings share their room (default: the library's)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        job = json.loads(args.child)
        job["new_tokens"] = tuple(job["new_tokens"])
        print(json.dumps(child(Job(**job))), flush=True)
        return

    name = args.name or f"memory_{args.shape}" + ("_cuda" if args.device != "cpu" else "")
    counts = tuple(sorted(set(args.new_tokens)))
    calibration_s = calibrate_once(args.shape, args.device, args.dtype)
    print(f"calibration ready ({calibration_s:.1f} s, cached on disk)", flush=True)
    logs = ROOT / "benchmarks" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []

    def env() -> dict[str, Any]:
        return {
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "shape": args.shape,
            "device_arg": args.device,
            "dtype_arg": args.dtype,
        }

    for method in args.methods:
        for length in args.lengths:
            job = Job(
                method,
                length,
                args.shape,
                args.device,
                args.dtype,
                counts,
                args.positions,
                args.sibling_budget,
            )
            timeout = args.full_timeout if method == "full" and args.full_timeout else args.timeout
            record = measure(job, timeout, logs / f"{name}_{method}_{length}.log")
            record["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            records.append(record)
            print(
                f"{method:5s} {length:6d} {record['status']:8s} "
                f"peak={record.get('peak_mib', record.get('process_peak_rss_mib'))} MiB "
                f"t={record.get('seconds', record['process_wall_s'])} s "
                f"decode={record.get('decode_s')}",
                flush=True,
            )
            write_result(name, {"records": records}, env())

    text = table(records, list(args.lengths), counts)
    homer_growth, full_growth = growth(records, "homer"), growth(records, "full")
    title = f"compress vs full prefill: {args.shape} on {args.device}"
    image = plot(records, name, title)
    summary = {
        "homer_peak_growth": round(homer_growth, 3) if homer_growth else None,
        "full_peak_growth": round(full_growth, 3) if full_growth else None,
        "calibration_s": round(calibration_s, 1),
    }
    results = {"records": records, "summary": summary, "table": text, "plot": image}
    write_result(name, results, env())
    show(f"{text}\n{summary}", image)


if __name__ == "__main__":
    main()
