"""Synthetic pre-processed splits for the benchmark, and the data-only benchmark.

The benchmark feeds the trainer exactly what :func:`vit_train.data.prepare` would hand it: a cache
folder of ``train.safetensors`` / ``eval.safetensors`` (float16 pixels [N, C, H, W], int64 labels),
opened through the real :class:`vit_train.prepared.TensorSplit` (memory-mapped). Only the pixels are
synthetic, so no dataset library, image decoding or hub is involved and the GPU host needs none.

Each image is noise plus a faint colour cast that tells its class, so the loss moves a lot over the
first steps (ViT-B/16, lr 2e-4: about 1.4, 3, 2, 0.9, 0.3, ...) and the loss curves of the
configurations can be compared with an fp32 reference step by step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

CLASS_NAMES = ["class_0", "class_1", "class_2"]


def write_synthetic_splits(folder: Path, num_train: int, num_eval: int, image_size: int, seed: int = 0) -> Path:
    """Write a cache-format folder; returns it. Pure function of the arguments."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", num_train), ("eval", num_eval)):
        labels = torch.randperm(n, generator=g) % len(CLASS_NAMES)
        pixels = torch.randn(n, 3, image_size, image_size, generator=g) * 0.5
        pixels[torch.arange(n), labels] += 0.05  # a faint colour cast: learnt over several steps
        save_file({"pixel_values": pixels.half(), "labels": labels.long()}, str(folder / f"{split}.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"class_names": CLASS_NAMES, "synthetic": True}))
    return folder


def open_prepared(folder: Path) -> Any:
    """The folder as the trainer's :class:`vit_train.prepared.PreparedData` (memory-mapped TensorSplits)."""
    from vit_train.prepared import PreparedData, TensorSplit

    return PreparedData(
        train=TensorSplit(folder / "train.safetensors"),
        eval=TensorSplit(folder / "eval.safetensors"),
        class_names=list(CLASS_NAMES),
        cache_path=folder,
        built=False,
    )


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, labels) read whole, for the plain-PyTorch baselines (no vit_train.data import)."""
    from safetensors.torch import load_file

    t = load_file(str(folder / f"{split}.safetensors"))
    return t["pixel_values"], t["labels"]


def _rate(fn: Any, num_batches: int, batch_size: int, device: torch.device) -> float:
    fn(0)  # first touch: page faults, allocator, pinned pool
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(num_batches):
        fn(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return num_batches * batch_size / (time.perf_counter() - t0)


def data_rates(folder: Path, batch_size: int, device: torch.device, num_batches: int = 20) -> dict[str, float]:
    """Images/s that the cache can hand the training step, by path (random batches, as in training).

    - ``host_gather_pageable_copy``: index the memory-mapped split, copy the pageable batch (the
      trainer's path before staging; on CPU just the gather);
    - ``host_gather_pinned_copy``: gather into pinned memory, asynchronous copy (the trainer's path
      for a split too large to stage);
    - ``device_gather``: the split staged on the GPU once, batches gathered there (the trainer's
      path for splits up to a tenth of the GPU's memory).
    """
    from vit_train.sampling import TrainOrder
    from vit_train.step import gather_batch, stage_on_device

    x, y = open_prepared(folder).train.tensors()
    order = TrainOrder(len(y), batch_size, seed=0)
    steps = order.steps_per_epoch

    def idx(i: int) -> torch.Tensor:
        return order.batch_indices(order.epoch_permutation(i // steps), i % steps, 0, 1)

    def pageable(i: int) -> Any:
        rows = idx(i)
        return x[rows].to(device, non_blocking=True), y[rows].to(device, non_blocking=True)

    rates = {"host_gather_pageable_copy": _rate(pageable, num_batches, batch_size, device)}
    if device.type == "cuda":
        rates["host_gather_pinned_copy"] = _rate(lambda i: gather_batch(x, y, idx(i), device), num_batches,
                                                 batch_size, device)
        t0 = time.perf_counter()
        xd, yd = stage_on_device(x, y, device)
        torch.cuda.synchronize(device)
        rates["stage_seconds"] = time.perf_counter() - t0
        rates["device_gather"] = _rate(lambda i: gather_batch(xd, yd, idx(i), device), num_batches, batch_size, device)
    return rates


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Dense bf16 matrix-product rate on random data: the measured ceiling MFU is also reported against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12
