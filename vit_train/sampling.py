"""Data order as a pure function of (seed, epoch, step, dp rank).

The global batch of a step is the same whatever the layout: rank r of d data-parallel ranks takes
the r-th contiguous slice of it. So a run resumed after step k under another layout continues with
exactly the images it would have seen, and losses are comparable with single-process training on
the same global batch. Training drops the last incomplete global batch of an epoch (the order is
reshuffled every epoch, so every image is still used); evaluation drops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainOrder:
    num_samples: int
    global_batch: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def batch_indices(self, perm: torch.Tensor, step_in_epoch: int, dp_rank: int, dp_size: int) -> torch.Tensor:
        per_rank = self.global_batch // dp_size
        start = step_in_epoch * self.global_batch + dp_rank * per_rank
        return perm[start : start + per_rank]


def eval_shards(num_samples: int, per_rank_batch: int, dp_rank: int, dp_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every sample exactly once, split over dp ranks in equal-shaped batches.

    Every rank runs the same number of same-shaped batches (collectives inside Gemini/ZeRO/PP
    forwards need that), so the tail is padded with repeats of sample 0 whose mask is 0: the
    padding exists only here, in the evaluation loop, and is never counted.
    Returns (indices, mask) per batch for this rank.
    """
    chunk = per_rank_batch * dp_size
    total = -(-num_samples // chunk) * chunk
    idx = torch.arange(total)
    mask = idx < num_samples
    idx = torch.where(mask, idx, torch.zeros_like(idx))
    out = []
    for start in range(0, total, chunk):
        lo = start + dp_rank * per_rank_batch
        out.append((idx[lo : lo + per_rank_batch], mask[lo : lo + per_rank_batch]))
    return out
