"""What one training step is made of, shared by the loop, evaluation and the benchmark.

The batch path (a training split staged on the GPU once, then one on-device gather per step) and
the pipeline criterion. Kept apart from :mod:`vit_train.trainer` so that evaluation and the
benchmark use the same code without importing the loop.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


# A training split up to this share of the GPU's memory is copied to the GPU once: a batch is then
# one on-device gather (microseconds) instead of a CPU gather plus a host-to-device copy each step
# (a 256-image ViT-B batch is 77 MB of float16). Larger splits stay in host memory (see gather_batch).
_STAGE_FRACTION = 0.1


def stage_on_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type != "cuda":
        return x, y
    nbytes = x.numel() * x.element_size() + y.numel() * y.element_size()
    if nbytes > _STAGE_FRACTION * torch.cuda.get_device_properties(device).total_memory:
        log.info("training split (%.1f GiB) stays in host memory; batches are copied per step", nbytes / 2**30)
        return x, y
    return x.to(device), y.to(device)


def gather_batch(
    x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of (x, y) on ``device``, with no host synchronisation on a GPU."""
    if device.type != "cuda":
        return x[idx], y[idx]
    if x.device.type == "cuda":  # staged split: move the few indices, gather on the GPU
        idx = to_device(idx, device)
        return x[idx], y[idx]
    # Gather straight into pinned memory so the copy runs asynchronously (a pageable source makes
    # the copy wait for the GPU to drain); the caching host allocator keeps each buffer until its
    # copy has finished.
    xb = torch.empty((len(idx), *x.shape[1:]), dtype=x.dtype, pin_memory=True)
    yb = torch.empty((len(idx), *y.shape[1:]), dtype=y.dtype, pin_memory=True)
    torch.index_select(x, 0, idx, out=xb)
    torch.index_select(y, 0, idx, out=yb)
    return xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (a small CPU tensor) on ``device`` without a host synchronisation: a copy from pageable
    memory waits for the GPU's queue to drain, one from pinned memory does not."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def criterion(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pipeline criterion: the same mean cross-entropy the non-pipeline path computes."""
    return F.cross_entropy(outputs.logits.float(), inputs["labels"])
