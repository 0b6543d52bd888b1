"""Moving a cache's tensors between the host and accelerators.

A loaded cache lands in ordinary (pageable) host memory. Copied from there to a GPU, the driver
first copies it again into a pinned staging buffer, and each copy blocks the host. Pinning the
host tensor first lets the copy run as DMA straight from it, and `non_blocking` lets the copies
of every layer be queued at once; one synchronisation per device at the end makes the result
safe to use. On the CPU (or GPU to GPU) nothing changes: `to` is called as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pins_for(source: torch.device, target: torch.device) -> bool:
    """Whether a copy from `source` to `target` goes through pinned host memory: a host tensor
    bound for a CUDA device, with CUDA present to pin it."""
    return source.type == "cpu" and target.type == "cuda" and torch.cuda.is_available()


def move_all(
    tensors: Sequence[torch.Tensor],
    devices: Sequence[torch.device],
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """`tensors[i]` on `devices[i]` (and in `dtype` when given), host-to-GPU copies pinned and
    queued without blocking, then one synchronisation per GPU touched.

    The dtype cast happens on the host before the copy when it makes the tensor smaller (fewer
    bytes cross the bus), on the device after the copy otherwise.
    """
    if len(tensors) != len(devices):
        raise ValueError(f"{len(tensors)} tensors for {len(devices)} devices")
    moved: list[torch.Tensor] = []
    queued: set[torch.device] = set()
    for tensor, device in zip(tensors, devices, strict=True):
        device = torch.device(device)
        if not pins_for(tensor.device, device):
            moved.append(tensor.to(device=device, dtype=dtype))
            continue
        host = tensor
        if dtype is not None and dtype.itemsize < tensor.dtype.itemsize:
            host = tensor.to(dtype)
        copy = host.pin_memory().to(device=device, non_blocking=True)
        moved.append(copy if dtype is None else copy.to(dtype))
        queued.add(device)
    for device in queued:
        # The pinned buffers are freed only after their copies end; waiting here makes the
        # tensors safe for any stream, not just the current one.
        torch.cuda.synchronize(device)
    return moved
