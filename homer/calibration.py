"""The calibration bias: how large a last-token attention logit is, on average, at each distance.

Raw attention logits favour recent tokens, so pruning by them would keep mostly each chunk's
tail. HOMER subtracts, per layer and per distance, the mean significance (max over heads of the
last token's pre-softmax logit) measured on ordinary text (ALGORITHM.md §4). homer measures it
itself from prose bundled with the package, caches it per model fingerprint (RoPE scaling
included), prompt and chunk size under `paths.calibration_dir()`, and never downloads anything.

Two ways to measure, matching the two reduction rules:
- `"plain"` (the paper): chunks of ordinary text, the last token an ordinary word.
- `"template"`: chunks laid out exactly as compression lays them out (prefix + text + suffix),
  so the last token is the suffix's, as when compressing.

A saved bias is reused for everything it does not depend on (the dtype, `--budget`, `--focus`,
the document), but never across chunk sizes: `bias[l, d]` is measured on chunks of exactly
`max_chunk_len` tokens, from the last token of each, and that token's query has read the whole
chunk, so a chunk of another length gives other values at every distance, the shared ones
included (`tests/test_calibration.py` checks that they differ). Reusing a prefix of a longer
chunk's bias would change which tokens are pruned. When a bias must be measured, `calibrate`
says why (`CalibrationNeeded`), naming the chunk sizes already measured for the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from homer.adapter import ModelAdapter
from homer.chunking import leaf_positions
from homer.config import HomerConfig, ResolvedConfig
from homer.fingerprint import model_fingerprint, tokenizer_fingerprint
from homer.paths import calibration_dir
from homer.prompts import PromptTemplate, encode
from homer.significance import last_query_logits
from homer.store import fs

logger = logging.getLogger(__name__)

CalibrationMode = Literal["plain", "template"]
FORMAT_VERSION = 1
DEFAULT_SAMPLES = 8

#: Why a bias measured for one chunk size is not reused for another (see the module docstring).
CHUNK_SIZE_REASON = (
    "calibration depends on the chunk size: the bias is measured from the last token of chunks "
    "of exactly that length, and a chunk of another length changes it at every distance"
)


@dataclass(frozen=True)
class Calibration:
    """A per-layer, per-distance bias.

    Attributes:
        bias: `(num_layers, max_distance)` float32; `bias[l, d]` is the mean significance at layer
            `l` of a token `d` positions before the last one.
        mode: how it was measured (`"plain"` or `"template"`).
        key: what it was measured for (model, tokenizer, prompt, chunk size); see `calibration_key`.
    """

    bias: torch.Tensor
    mode: CalibrationMode
    key: str

    def layer(self, index: int) -> torch.Tensor:
        return self.bias[index]


def calibration_text() -> str:
    """Ordinary English prose shipped with homer (public domain), comment lines removed."""
    raw = (Path(__file__).parent / "data" / "calibration.txt").read_text(encoding="utf-8")
    return "\n".join(line for line in raw.splitlines() if not line.startswith("#"))


def calibration_key(
    model: torch.nn.Module,
    tokenizer: Any,
    resolved: ResolvedConfig,
    mode: CalibrationMode,
    samples: int,
) -> str:
    """A short hash of everything the bias depends on."""
    return _key(_key_parts(model, tokenizer, resolved, mode, samples))


def _key_parts(
    model: torch.nn.Module,
    tokenizer: Any,
    resolved: ResolvedConfig,
    mode: CalibrationMode,
    samples: int,
) -> dict[str, Any]:
    template = PromptTemplate.for_tokenizer(tokenizer)
    return {
        "model": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "mode": mode,
        "max_chunk_len": resolved.max_chunk_len,
        "samples": samples,
        "prefix": template.prefix() if mode == "template" else "",
        "suffix": template.suffix() if mode == "template" else "",
        "version": FORMAT_VERSION,
    }


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CalibrationNeeded:
    """Why a bias is about to be measured (sent before measuring, for a front end to say).

    Attributes:
        max_chunk_len: the chunk size it is measured for.
        samples: chunks of calibration text it reads (one progress step each).
        reason: one clause: the first calibration of this model, another chunk size than
            those measured (`CHUNK_SIZE_REASON`), a damaged file, or a forced measurement.
        measured_chunk_lens: the chunk sizes already measured for this model, tokenizer and
            mode (saved biases written by this version of homer), smallest first.
    """

    max_chunk_len: int
    samples: int
    reason: str
    measured_chunk_lens: tuple[int, ...] = ()


def measured_chunk_lens(parts: dict[str, Any], folder: Path | None = None) -> tuple[int, ...]:
    """The chunk sizes whose bias is saved for the model, tokenizer, mode, prompt and sample
    count in `parts` (read from the saved files' metadata; files without it are skipped)."""
    folder = folder or calibration_dir()
    same = {k: str(v) for k, v in parts.items() if k != "max_chunk_len"}
    found: set[int] = set()
    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # a damaged file is someone else's to report; it names no size here
            continue
        if (
            all(meta.get(k) == v for k, v in same.items())
            and meta.get("max_chunk_len", "").isdigit()
        ):
            found.add(int(meta["max_chunk_len"]))
    found.discard(int(parts["max_chunk_len"]))
    return tuple(sorted(found))


def _sample_sequences(
    tokenizer: Any, resolved: ResolvedConfig, mode: CalibrationMode, samples: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`samples` (ids, positions) pairs laid out like compression chunks."""
    text_ids = torch.tensor(encode(tokenizer, calibration_text()), dtype=torch.long)
    template = PromptTemplate.for_tokenizer(tokenizer)
    if mode == "template":
        prefix = encode(tokenizer, template.prefix())
        if template.add_bos:
            prefix = [tokenizer.bos_token_id, *prefix]
        suffix = encode(tokenizer, template.suffix())
    else:
        prefix = [tokenizer.bos_token_id] if template.add_bos else []
        suffix = []
    span = resolved.max_chunk_len - len(prefix) - len(suffix)
    if span < 2:
        raise ValueError(f"max_chunk_len {resolved.max_chunk_len} is too small to calibrate")
    # Repeat the text if a very large chunk needs more than it holds.
    while text_ids.shape[0] < span + samples:
        text_ids = torch.cat([text_ids, text_ids])
    starts = torch.linspace(0, text_ids.shape[0] - span, samples).long().tolist()
    out = []
    for start in starts:
        piece = text_ids[start : start + span]
        ids = torch.cat(
            [torch.tensor(prefix, dtype=torch.long), piece, torch.tensor(suffix, dtype=torch.long)]
        )
        out.append((ids, leaf_positions(len(prefix), span, len(suffix), span)))
    return out


def smooth_by_distance(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean per distance, averaged over a window that widens with distance (±d/16).

    Short distances, where the bias changes fast and samples are plenty, stay exact; long ones,
    with few samples each, borrow from their neighbours.

    Args:
        sums: `(L, D)` summed significance per layer and distance.
        counts: `(D,)` samples per distance.

    Returns:
        `(L, D)` float32 bias; distances never observed take the nearest observed value.
    """
    num_distances = counts.shape[0]
    distance = torch.arange(num_distances)
    half = distance // 16
    lo = (distance - half).clamp(min=0)
    hi = (distance + half + 1).clamp(max=num_distances)
    zero = torch.zeros(sums.shape[0], 1, dtype=torch.float64)
    cum_sums = torch.cat([zero, sums.double().cumsum(1)], dim=1)
    cum_counts = torch.cat([torch.zeros(1, dtype=torch.float64), counts.double().cumsum(0)])
    window_counts = cum_counts[hi] - cum_counts[lo]
    mean = (cum_sums[:, hi] - cum_sums[:, lo]) / window_counts.clamp(min=1)
    observed = window_counts > 0
    if not bool(observed.all()):
        last = int(observed.nonzero().max())
        mean[:, last + 1 :] = mean[:, last : last + 1]
    return mean.float()


@torch.inference_mode()
def measure_bias(
    adapter: ModelAdapter,
    sequences: list[tuple[torch.Tensor, torch.Tensor]],
    max_distance: int,
    on_sample: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Mean significance per layer and distance over `sequences`, smoothed.

    Returns:
        `(num_layers, max_distance)` float32.
    """
    layers = range(adapter.num_layers)
    sums = torch.zeros(adapter.num_layers, max_distance, dtype=torch.float64)
    counts = torch.zeros(max_distance, dtype=torch.float64)
    for n, (ids, positions) in enumerate(sequences):
        hidden = adapter.embed(ids)
        run = adapter.run_layers(
            hidden, adapter.rotary(hidden, positions), layers, query_layers=frozenset(layers)
        )
        distance = (positions[-1] - positions).clamp(max=max_distance - 1)
        for layer in layers:
            logits = last_query_logits(run.queries[layer], run.keys[layer][0], run.scaling[layer])
            sums[layer].index_add_(0, distance, logits.max(dim=0).values.double().cpu())
        counts.index_add_(0, distance, torch.ones_like(distance, dtype=torch.float64))
        del run
        if on_sample is not None:
            on_sample(n + 1, len(sequences))
    return smooth_by_distance(sums, counts)


def calibrate(
    model: torch.nn.Module,
    tokenizer: Any,
    config: HomerConfig | None = None,
    *,
    mode: CalibrationMode | None = None,
    samples: int = DEFAULT_SAMPLES,
    force: bool = False,
    on_sample: Callable[[int, int], None] | None = None,
    on_measure: Callable[[CalibrationNeeded], None] | None = None,
) -> Calibration:
    """Build (or load from the per-model cache) the calibration bias for `model`.

    Args:
        config: chunk size and reduction rule; the rule picks the mode (`"paper"` -> `"plain"`,
            `"spans"` -> `"template"`) unless `mode` is given.
        samples: chunks of calibration text to average over.
        force: measure again even if a cached bias exists.
        on_sample: called with (done, total) after each sample (for progress bars).
        on_measure: called once before a bias is measured (not when a saved one is loaded),
            with why it must be.
    """
    config = config or HomerConfig()
    adapter = ModelAdapter(model)
    resolved = config.resolve(num_layers=adapter.num_layers, window=adapter.window)
    mode = mode or resolved.pruning.calibration_mode
    parts = _key_parts(model, tokenizer, resolved, mode, samples)
    key = _key(parts)
    path = calibration_dir() / f"{key}.safetensors"
    fs.sweep(path.parent, unowned_after=_STALE_TEMP_SECONDS)
    shape = (adapter.num_layers, resolved.max_chunk_len)
    if force:
        reason = "measuring again as asked"
    elif path.exists():
        bias = _load_saved(path, shape)
        if bias is not None:
            return Calibration(bias=bias, mode=mode, key=key)
        reason = "the saved calibration file was damaged"
    else:
        reason = ""
    measured = measured_chunk_lens(parts, path.parent)
    if not reason:
        reason = CHUNK_SIZE_REASON if measured else "the first calibration of this model"
    need = CalibrationNeeded(resolved.max_chunk_len, samples, reason, measured)
    logger.info(
        "calibrating %s (%d samples of %d tokens): %s", mode, samples, need.max_chunk_len, reason
    )
    if on_measure is not None:
        on_measure(need)
    sequences = _sample_sequences(tokenizer, resolved, mode, samples)
    bias = measure_bias(adapter, sequences, resolved.max_chunk_len, on_sample).contiguous()
    # What the bias was measured for, so a later calibration can say which sizes exist.
    metadata = {k: str(v) for k, v in parts.items()}
    metadata.update(format_version=str(FORMAT_VERSION), sha256=_checksum(bias))
    with fs.replacing(path) as tmp:
        save_file({"bias": bias}, str(tmp), metadata=metadata)
    return Calibration(bias=bias, mode=mode, key=key)


#: Temp files of homer 0.1.0 carry no process id; older than this, their writer is gone.
_STALE_TEMP_SECONDS = 3600.0


def _checksum(bias: torch.Tensor) -> str:
    """SHA-256 of the bias's float32 values, as saved in the file's metadata."""
    return hashlib.sha256(bias.float().contiguous().numpy().tobytes()).hexdigest()


def _load_saved(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The bias saved at `path` if it is whole and sound, else None (with one warning).

    Sound: float32 of the expected `(layers, distances)` shape, every value finite, and its
    checksum as recorded (files written before checksums were recorded have none to check).
    A file that fails is measured again and replaced, never used.
    """
    try:
        with safe_open(str(path), "pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            bias = fh.get_tensor("bias")
    except Exception as exc:  # any damage a parser can meet: the file is rebuilt, never trusted
        problem = f"unreadable ({exc})"
    else:
        if bias.dtype != torch.float32 or tuple(bias.shape) != shape:
            problem = f"a {bias.dtype} bias of shape {tuple(bias.shape)}, not float32 {shape}"
        elif not bool(torch.isfinite(bias).all()):
            problem = "it holds values that are not finite"
        elif recorded is not None and recorded != _checksum(bias):
            problem = "checksum mismatch (the file is damaged)"
        else:
            return bias
    logger.warning("ignoring the calibration file %s: %s; measuring again", path, problem)
    return None
