"""vit_train.distributed.process_group.broadcast_module: every rank ends with rank 0's parameters and buffers.

The trainer calls it after building a preset's random weights on each rank's GPU, where torch's CUDA
sampling can draw other values on another GPU model. No GPU here: two real gloo ranks under
``torchrun`` on the CPU, rank 1 starting from other weights (as a rank on another GPU model would),
checked before and after the call with rank 0's values gathered to both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_every_rank_gets_rank_zeros_weights() -> None:
    from tests.train_utils import run_torchrun_child

    r = run_torchrun_child(Path(__file__), nproc=2, timeout=300)
    assert r["differed_before"] is True, r
    assert r["equal_after"] is True and r["n_tensors"] > 10, r
    assert r["rank0_unchanged"] is True, r


def _child() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from tests.train_utils import tiny_vit
    from vit_train.distributed.process_group import broadcast_module

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_vit(num_labels=3)
    model.register_buffer("probe", torch.full((4,), float(rank)))  # buffers travel too
    with torch.no_grad():
        for p in model.parameters():
            p.add_(rank * 0.5)
    own = [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]
    before: list[Any] = [None, None]
    dist.all_gather_object(before, own)
    broadcast_module(model)
    after: list[Any] = [None, None]
    dist.all_gather_object(after, [t.detach().clone() for t in [*model.parameters(), *model.buffers()]])
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    return {
        "n_tensors": len(own),
        "differed_before": not same(before[0], before[1]),
        "equal_after": same(after[0], after[1]) and same(after[1], before[0]),
        "rank0_unchanged": same(after[0], before[0]),
    }


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
