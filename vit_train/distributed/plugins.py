"""One factory from the layout config to a ColossalAI Booster plugin, and the rank helpers the loop asks.

The loop never inspects plugin types itself: it asks :class:`Layout` which data-parallel shard this
rank reads, whether it holds the loss (last pipeline stage) and whether it is the one copy of a
tensor-parallel group that should count evaluation samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from vit_train.patches.patching import as_shipped
from vit_train.config import RunConfig
from vit_train.distributed.layout import PLUGINS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where this rank sits in the parallel layout."""

    world_size: int
    rank: int
    dp_size: int
    dp_rank: int
    tp_rank: int
    is_first_stage: bool
    is_last_stage: bool
    uses_pipeline: bool

    @property
    def counts_metrics(self) -> bool:
        """One copy per data-parallel shard contributes to reduced metrics (TP ranks hold duplicates)."""
        return self.is_last_stage and self.tp_rank == 0


def _ddp(cfg: RunConfig, on_cuda: bool) -> Any:
    from colossalai.booster.plugin import TorchDDPPlugin

    # ViT's pooler is unused by the classification head in some configs; static graph is not needed.
    return TorchDDPPlugin(broadcast_buffers=False)


def _low_level_zero(cfg: RunConfig, on_cuda: bool) -> Any:
    from colossalai.booster.plugin import LowLevelZeroPlugin

    return LowLevelZeroPlugin(
        stage=cfg.parallel.zero_stage,
        precision=cfg.precision,
        max_norm=cfg.optim.max_grad_norm,
        # Overlap uses CUDA side streams; the CPU accelerator has none.
        overlap_communication=on_cuda,
    )


def _gemini(cfg: RunConfig, on_cuda: bool) -> Any:
    from colossalai.booster.plugin import GeminiPlugin

    p = cfg.parallel
    kwargs: dict[str, Any] = dict(
        placement_policy=p.gemini_placement,
        precision=cfg.precision,
        max_norm=cfg.optim.max_grad_norm,
        initial_scale=2**16 if cfg.precision == "fp16" else 1,
        # What enable_async_reduce (the default) turns on anyway; offloaded chunks need it.
        pin_memory=True,
    )
    if _world_size() == 1 and not as_shipped():
        # With one rank there is no gradient reduction to overlap: the side stream only costs two
        # stream switches and a cross-stream wait per parameter gradient on the host (BENCHMARKS.md).
        kwargs["enable_async_reduce"] = False
    if p.gemini_placement == "static":
        kwargs["offload_optim_frac"] = p.offload_optim_frac
    return GeminiPlugin(**kwargs)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _replicated_head_policy() -> Any:
    """ColossalAI's ViT policy with the classification head left whole on every TP rank.

    The stock policy splits the head column-wise, which fails unless num_labels divides by tp_size
    (beans has 3 labels) and tempts people to pad the label set. The head is tiny (hidden x labels)
    and its input is already identical on every TP rank, so keeping it replicated costs nothing
    and needs no padding; ColossalAI's grad-norm code already treats non-distributed parameters as
    replicated across the TP group.
    """
    from colossalai.shardformer.policies.vit import ViTForImageClassificationPolicy
    from transformers.models.vit.modeling_vit import ViTForImageClassification

    class ReplicatedHeadViTPolicy(ViTForImageClassificationPolicy):
        def module_policy(self):  # type: ignore[no-untyped-def]
            policy = super().module_policy()
            desc = policy.get(ViTForImageClassification)
            if desc is not None and self.shard_config.enable_tensor_parallelism:
                desc.sub_module_replacement = [
                    r for r in (desc.sub_module_replacement or []) if r.suffix != "classifier"
                ]
            return policy

    return ReplicatedHeadViTPolicy()


def _hybrid(cfg: RunConfig, on_cuda: bool) -> Any:
    from colossalai.booster.plugin import HybridParallelPlugin

    p = cfg.parallel
    kwargs: dict[str, Any] = dict(
        tp_size=p.tp_size,
        pp_size=p.pp_size,
        zero_stage=p.zero_stage,
        precision=cfg.precision,
        max_norm=cfg.optim.max_grad_norm,
        enable_all_optimization=p.enable_all_optimization and on_cuda,
        overlap_communication=on_cuda,
        initial_scale=2**16 if cfg.precision == "fp16" else 1,
        custom_policy=_replicated_head_policy(),
    )
    if p.pp_size > 1:
        kwargs.update(num_microbatches=p.num_microbatches, microbatch_size=p.microbatch_size)
        # Overlapping p2p needs CUDA streams; the metadata cache assumes fixed shapes, which holds.
        kwargs["overlap_p2p"] = on_cuda
    return HybridParallelPlugin(**kwargs)


_FACTORIES: dict[str, Callable[[RunConfig, bool], Any]] = {
    "torch_ddp": _ddp,
    "low_level_zero": _low_level_zero,
    "gemini": _gemini,
    "hybrid_parallel": _hybrid,
}
assert set(_FACTORIES) == set(PLUGINS), "every plugin name in the config needs a factory"


def build_plugin(cfg: RunConfig, on_cuda: bool) -> Any:
    """Build the Booster plugin named by ``cfg.parallel.plugin`` (the config already validated it)."""
    if not on_cuda:
        from vit_train.patches.cpu_compat import apply_cpu_compat

        applied = apply_cpu_compat()
        if applied:
            log.info("ColossalAI CPU compatibility fixes applied: %s", ", ".join(applied))
    if as_shipped():
        log.info("VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1: ColossalAI's optimizers run without vit_train's speed fixes")
    elif cfg.parallel.plugin == "low_level_zero" or (cfg.parallel.plugin == "hybrid_parallel" and cfg.parallel.zero_stage > 0):
        from vit_train.patches.zero_buckets import apply_zero_bucket_fix

        # The decay/no-decay parameter groups would otherwise end a gradient bucket at every parameter.
        apply_zero_bucket_fix()
    elif cfg.parallel.plugin == "hybrid_parallel" and cfg.parallel.zero_stage == 0:
        from vit_train.patches.amp_loops import apply_amp_loop_fix

        # bf16/fp16 master-weight steps with all-parameter kernels instead of three per-parameter loops.
        apply_amp_loop_fix()
    if cfg.parallel.plugin in ("hybrid_parallel", "torch_ddp") and not as_shipped():
        from vit_train.patches.one_rank_ddp import apply_hybrid_ddp_fix, apply_torch_ddp_fix

        # No DDP (NCCL set-up at boost, a multiply and a copy per gradient) over a one-rank group.
        if cfg.parallel.plugin == "hybrid_parallel":
            apply_hybrid_ddp_fix()
        else:
            apply_torch_ddp_fix()
    return _FACTORIES[cfg.parallel.plugin](cfg, on_cuda)


def build_booster(cfg: RunConfig, plugin: Any, on_cuda: bool) -> Any:
    from colossalai.booster import Booster

    # torch_ddp takes its precision from the Booster: fp16 uses torch AMP with a grad scaler. bf16
    # needs no scaler, so the loop wraps the forward in autocast itself (Booster's "bf16" mixed
    # precision class is an empty placeholder in colossalai 0.5.0).
    mixed = "fp16" if (cfg.parallel.plugin == "torch_ddp" and cfg.precision == "fp16") else None
    return Booster(plugin=plugin, mixed_precision=mixed)


def needs_autocast(cfg: RunConfig) -> bool:
    """Only torch_ddp runs the model in fp32 weights with a bf16 autocast; the others cast weights."""
    return cfg.parallel.plugin == "torch_ddp" and cfg.precision == "bf16"


def build_optimizer(cfg: RunConfig, model: nn.Module, lr: float, on_cuda: bool) -> torch.optim.Optimizer:
    o = cfg.optim
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Standard practice for ViT fine-tuning: no weight decay on biases and LayerNorm weights.
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if o.optimizer == "hybrid_adam":
        from colossalai.nn.optimizer import HybridAdam

        from vit_train.patches.cpu_adam_bf16 import apply_cpu_adam_bf16_fix

        apply_cpu_adam_bf16_fix()  # bf16 gradients of CPU (offloaded) parameters were never clipped
        return HybridAdam(groups, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, adamw_mode=True)
    # The fused CUDA AdamW (one kernel over all tensors) is the fastest torch path for every plugin:
    # ZeRO and hybrid_parallel hand it fp32 master copies on the GPU. On CPU the default stays.
    return torch.optim.AdamW(groups, lr=lr, betas=o.betas, eps=o.eps, fused=on_cuda or None)


def layout_of(cfg: RunConfig, plugin: Any) -> Layout:
    world, rank = dist.get_world_size(), dist.get_rank()
    if cfg.parallel.plugin == "hybrid_parallel":
        sm = plugin.stage_manager
        return Layout(
            world_size=world,
            rank=rank,
            dp_size=dist.get_world_size(plugin.dp_group),
            dp_rank=dist.get_rank(plugin.dp_group),
            tp_rank=dist.get_rank(plugin.tp_group),
            is_first_stage=sm is None or sm.is_first_stage(),
            is_last_stage=sm is None or sm.is_last_stage(),
            uses_pipeline=sm is not None,
        )
    return Layout(world, rank, world, rank, 0, True, True, False)


def dp_group_of(cfg: RunConfig, plugin: Any) -> Any:
    """The process group that data parallelism averages gradients over (None: the whole world)."""
    return plugin.dp_group if cfg.parallel.plugin == "hybrid_parallel" else None
