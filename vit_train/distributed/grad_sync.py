"""Average the gradients over the data-parallel group inside the step: what ``model.cuda_graph``
uses where DDP would run with several data-parallel ranks.

torch DDP averages gradients from its reducer: autograd hooks that copy each gradient into a bucket
and start an asynchronous all-reduce per bucket while the backward still runs, plus a completion
callback at the end of the backward. That machinery lives on the host and keeps per-step state (which
buckets are ready, rebuilt bucket order after the first step), which is why this project does not
capture it. :class:`GradAllReduce` does the same arithmetic as DDP's default communication hook
(divide by the group size, sum-all-reduce) as plain collectives after the backward: the gradients
of each dtype concatenated into one flat buffer, one all-reduce of it, and one foreach copy back.
Those are a fixed sequence of kernels and one NCCL collective on the current stream, which a CUDA
graph records and replays like the tensor-parallel all-reduces it already holds. Without DDP's
overlap of communication with the backward, a step waits for one all-reduce of the gradients; at the
small batches the graph exists for, the host time it removes is worth more (BENCHMARKS.md measures
both on two GPUs).

The wrappers that would hold DDP leave it out inside :func:`vit_train.patches.one_rank_ddp.without_ddp`
and broadcast the first rank's weights as DDP's constructor would; the Trainer boosts there when the
graph is on. Works on gloo (CPU tests) and NCCL alike.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist


class GradAllReduce:
    """``__call__`` replaces every parameter's ``.grad`` by its mean over ``group`` (None: the world).

    Every trainable parameter must have a gradient when it runs (DDP without
    ``find_unused_parameters`` demands the same); a missing one is named in the error.
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], group: Any = None) -> None:
        self.named = [(n, p) for n, p in named_params if p.requires_grad]
        if not self.named:
            raise ValueError("GradAllReduce: the model has no trainable parameters")
        self.group = group
        self.size = dist.get_world_size(group)
        # One bucket per gradient dtype (a bf16 model's gradients are bf16, an fp32 one's fp32; a mix
        # of both would otherwise be promoted by the concatenation).
        self.buckets: dict[torch.dtype, list[int]] = {}
        for i, (_, p) in enumerate(self.named):
            self.buckets.setdefault(p.dtype, []).append(i)
        self.numels = {dtype: [self.named[i][1].numel() for i in idx] for dtype, idx in self.buckets.items()}

    def __call__(self) -> None:
        grads = []
        for name, p in self.named:
            if p.grad is None:
                raise RuntimeError(f"GradAllReduce: parameter {name!r} has no gradient after the backward (unused "
                                   "in the forward?); every trainable parameter must take part in the loss")
            grads.append(p.grad)
        for dtype, indices in self.buckets.items():
            bucket = [grads[i] for i in indices]
            flat = torch.cat([g.reshape(-1) for g in bucket])
            flat.div_(self.size)  # before the sum, in the gradients' dtype: DDP's default hook rounds the same way
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            views = [v.view_as(g) for v, g in zip(flat.split(self.numels[dtype]), bucket)]
            torch._foreach_copy_(bucket, views)


def build(named_params: Iterable[tuple[str, torch.nn.Parameter]], group: Any, dp_size: int) -> GradAllReduce | None:
    """The gradient average for a data-parallel size above 1, else None (nothing to average)."""
    return GradAllReduce(named_params, group) if dp_size > 1 else None
