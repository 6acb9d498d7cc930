"""HybridParallelPlugin without torch DDP around a model whose data-parallel group is one rank.

ColossalAI 0.5.0 wraps the boosted model in ``DistributedDataParallel`` over its data-parallel group
whenever ``pp_size == 1`` and that group has one rank (``HybridParallelPlugin.configure``:
``use_ddp = ... or (dp_size == 1 and pp_size == 1)``): on one GPU, and in every TP-only layout. Over
a group of one rank DDP reduces nothing, yet its reducer still handles every gradient in the
backward: a multiply by 1/group size into its bucket, a device copy from the bucket back into
``.grad``, and an all-reduce over the one rank. For ViT-B/16 that is ~400 small kernels per step
(200 ``mul``, 200 ``Memcpy DtoD``; H100 profile of ``hybrid+compile``, BENCHMARKS.md) between the
backward's products.

:func:`apply_hybrid_ddp_fix` makes ``HybridParallelModule`` skip the wrapper when the group it was
given has one rank. The gradients are the same bit for bit (a multiply by 1.0 and a copy are
exact), and nothing else changes: ``HybridParallelModule.sync_dp_grads`` already returns for a
one-rank group, ``unwrap`` and ``no_sync`` handle both forms, and with two or more ranks DDP stays.
"""

from __future__ import annotations

import inspect
from typing import Any

from vit_train.colossal_patch import patch_once


def _methods() -> dict[str, Any]:
    import torch.distributed as dist
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelModule

    original = HybridParallelModule.__init__
    signature = inspect.signature(original)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        group = bound.arguments.get("dp_group")
        if bound.arguments.get("use_ddp") and group is not None and dist.get_world_size(group) == 1:
            bound.arguments["use_ddp"] = False
        original(*bound.args, **bound.kwargs)

    return {"__init__": __init__}


def apply_hybrid_ddp_fix() -> bool:
    """Skip DDP for one-rank data-parallel groups from now on in this process (ColossalAI 0.5.0 only)."""
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelModule

    return patch_once("hybrid_ddp_one_rank", HybridParallelModule, _methods)
