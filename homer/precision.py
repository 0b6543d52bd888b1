"""Which dtype a model runs in for each phase when the user names none.

Compressing a document (the tree's prefills: large matrix products) and decoding an answer
(one token at a time: matrix-vector products) are different workloads, and on a CPU they favour
different dtypes. Measured with the embedded SmolLM2-135M on a shared 2-core AMD EPYC
(`benchmarks/dtype_speed.py`, docs/RESULTS.md "Precision per phase on the CPU"): bfloat16
compresses a 16k-token document no slower than float32 (1.13x faster in one run) and saves a
cache half the size, while float32 decodes about twice as fast as bfloat16, with the same
greedy answers from the same saved cache. So on the CPU homer compresses in bfloat16 and
decodes in float32; a bfloat16 cache is turned into float32 once, when it is loaded for
answering (exact: every bfloat16 value is a float32 value), and saved caches keep the dtype
they were built in, so every cache stays readable by every phase.

On a GPU nothing changes: both phases use the device's default (bfloat16 where supported,
else float16). A dtype the user names (`--dtype`, `ModelChoice.dtype`) applies to every phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What a model is loaded for: compressing documents, or decoding answers from saved caches.
Phase = Literal["compress", "decode"]


@dataclass(frozen=True)
class PrecisionPolicy:
    """The dtype name per phase; `None` leaves it to the device's default
    (`homer.models.resolve_dtype`)."""

    compress: str | None = None
    decode: str | None = None

    def dtype(self, phase: Phase | None) -> str | None:
        """The dtype for `phase`; `None` (a model used for both, or unsaid) keeps the default."""
        if phase == "compress":
            return self.compress
        if phase == "decode":
            return self.decode
        return None


#: On the CPU: bfloat16 prefill is faster, float32 decoding is faster (see the module docstring).
CPU_POLICY = PrecisionPolicy(compress="bfloat16", decode="float32")
#: Elsewhere (CUDA): the device's default for both phases.
DEVICE_DEFAULT = PrecisionPolicy()


def policy_for(device: str) -> PrecisionPolicy:
    """The policy on a resolved device (`"cpu"`, `"cuda"`, `"cuda:N"`, `"auto"`)."""
    return CPU_POLICY if device == "cpu" else DEVICE_DEFAULT


def dtype_for(phase: Phase | None, device: str | None, requested: str | None) -> str | None:
    """The dtype name to load a model in for `phase` on `device` (`None`: the CPU without CUDA).

    `requested` (the user's `--dtype`) wins for every phase; `None` or `"auto"` lets the policy
    choose, and `None` back means the device's default.

    Raises:
        ModelLoadError: `device` names CUDA where there is none, or is not a device.
    """
    if requested is not None and requested.lower() != "auto":
        return requested
    from homer.models import resolve_device

    return policy_for(resolve_device(device)).dtype(phase) or requested
