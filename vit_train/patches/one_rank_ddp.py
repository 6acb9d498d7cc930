"""No torch DDP around a model whose data-parallel group is one rank (ColossalAI 0.5.0).

Over a group of one rank DDP reduces nothing, yet it costs at start-up and in every step:

- its constructor checks parameter shapes across the group and broadcasts the weights, which
  creates the NCCL communicator (a few tenths of a second on the H100 host) for a world of one;
- its reducer handles every gradient in the backward: a multiply by 1/group size into its bucket,
  a device copy from the bucket back into ``.grad`` and an all-reduce over the one rank. For
  ViT-B/16 that is ~400 small kernels per step (200 ``mul``, 200 ``Memcpy DtoD``; H100 profile of
  ``hybrid+compile``, BENCHMARKS.md) between the backward's products.

Frameworks usually leave DDP out for one process (Accelerate, Lightning's single-device strategy);
ColossalAI always wraps: ``TorchDDPPlugin`` in ``TorchDDPModel``, and ``HybridParallelPlugin``
whenever ``pp_size == 1`` and the data-parallel group has one rank (``use_ddp = ... or (dp_size ==
1 and pp_size == 1)``: on one GPU and in every TP-only layout).

:func:`apply_hybrid_ddp_fix` makes ``HybridParallelModule`` skip the wrapper for a one-rank group:
``HybridParallelModule.sync_dp_grads`` already returns for such a group, ``unwrap`` and ``no_sync``
handle both forms. :func:`apply_torch_ddp_fix` makes ``TorchDDPModel`` put :class:`NoDDP` where
DDP would be when the process group has one rank: it holds the model under the same attribute
(``.module``, so ``unwrap()`` and the checkpoint keys stay the same) and offers ``no_sync``. The
gradients are the same bit for bit (a multiply by 1.0 and a copy are exact); with two or more
ranks DDP stays, except inside :func:`without_ddp`: a caller that averages the gradients itself
(``model.cuda_graph`` with several data-parallel ranks: one all-reduce inside the captured step,
:mod:`vit_train.distributed.grad_sync`) boosts there, and the wrappers then leave DDP out for any group
size; they still broadcast the group's first rank's weights, as DDP's constructor does.
``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1`` keeps ColossalAI's wrappers.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Any, Iterator

from torch import nn

from vit_train.patches.patching import patch_once


_CALLER_SYNCS = contextvars.ContextVar("vit_train_caller_syncs_grads", default=False)


@contextlib.contextmanager
def without_ddp() -> Iterator[None]:
    """Models boosted inside get no DDP whatever their group size: the caller averages their gradients
    over the data-parallel group itself. Only with the fixes applied (the wrappers read this flag)."""
    token = _CALLER_SYNCS.set(True)
    try:
        yield
    finally:
        _CALLER_SYNCS.reset(token)


class NoDDP(nn.Module):
    """Stands where ``DistributedDataParallel`` would: the model as ``.module``, a forward that calls
    it, and a ``no_sync`` with nothing to hold back."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        yield


def _one_rank(group: Any) -> bool:
    import torch.distributed as dist

    return dist.get_world_size(group) == 1


def _skip_ddp(group: Any) -> bool:
    return _one_rank(group) or _CALLER_SYNCS.get()


def _broadcast_like_ddp(module: nn.Module, group: Any) -> None:
    """DDP's constructor gives every rank the group's first rank's weights; so does its absence."""
    import torch.distributed as dist

    from vit_train.distributed.process_group import broadcast_module

    if not _one_rank(group):
        broadcast_module(module, dist.get_global_rank(group or dist.group.WORLD, 0), group)


def _hybrid_methods() -> dict[str, Any]:
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelModule

    original = HybridParallelModule.__init__
    signature = inspect.signature(original)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        group = bound.arguments.get("dp_group")
        skipped = bool(bound.arguments.get("use_ddp")) and group is not None and _skip_ddp(group)
        if skipped:
            bound.arguments["use_ddp"] = False
        original(*bound.args, **bound.kwargs)
        if skipped:
            _broadcast_like_ddp(self.module, group)

    return {"__init__": __init__}


def _torch_ddp_methods() -> dict[str, Any]:
    from colossalai.booster.plugin.torch_ddp_plugin import TorchDDPModel
    from colossalai.interface import ModelWrapper

    original = TorchDDPModel.__init__

    def __init__(self: Any, module: nn.Module, *args: Any, **kwargs: Any) -> None:
        group = kwargs.get("process_group")
        if args or not _skip_ddp(group):
            original(self, module, *args, **kwargs)
            return
        ModelWrapper.__init__(self, module)
        self.module = NoDDP(module)
        _broadcast_like_ddp(module, group)

    return {"__init__": __init__}


def apply_hybrid_ddp_fix() -> bool:
    """Skip DDP in HybridParallelPlugin for one-rank data-parallel groups from now on in this process."""
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelModule

    return patch_once("hybrid_ddp_one_rank", HybridParallelModule, _hybrid_methods)


def apply_torch_ddp_fix() -> bool:
    """Skip DDP in TorchDDPPlugin for a one-rank world from now on in this process."""
    from colossalai.booster.plugin.torch_ddp_plugin import TorchDDPModel

    return patch_once("torch_ddp_one_rank", TorchDDPModel, _torch_ddp_methods)
