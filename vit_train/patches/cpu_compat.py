"""Run-time fixes that let ColossalAI 0.5.0 Booster plugins train on CPU (gloo) with torch 2.13 and 2.5.1.

Call :func:`apply_cpu_compat` once per process, after ``import colossalai`` is possible and
before any plugin, optimizer or booster is built. It does nothing on a machine with CUDA.

Each fix is a narrow monkeypatch of one ColossalAI function/method (or one missing torch
attribute); nothing else in ColossalAI is touched:

1. ``lowlevelzero_sanity``: ``LowLevelZeroOptimizer._sanity_checks`` asserts the accelerator is
   cuda/npu (colossalai/zero/low_level/low_level_optim.py:254). We keep its dtype check only.
2. ``cpu_accelerator``: ``CpuAccelerator`` raises "not supported" for Stream/Event/current_stream/
   stream/synchronize/empty_cache/manual_seed, calls ``torch.get_rng_state(device)`` (no argument
   on CPU) and its ``current_device()`` raises; pipeline p2p code needs ``torch.device("cpu")``.
3. ``hccl_available``: torch 2.13 dropped (and 2.5.1 lacks) ``torch.distributed.is_hccl_available``,
   which colossalai/pipeline/p2p.py:159 calls; on a torch built with NCCL (any CUDA wheel, GPU or
   not) the same check then reads ``Backend.HCCL``, which no torch defines, for every gloo group.
4. ``hybrid_adam_torch_kernel``: ``CPUAdamLoader`` finds no usable kernel without CUDA (the x86
   kernel is a CUDA extension); we give CPUAdam/HybridAdam a pure-torch kernel with the same
   ``step`` signature and semantics (AdamW or Adam+L2, bias correction, loss-scale division).

Not a patch but required: ``LowLevelZeroPlugin(..., overlap_communication=False)`` on CPU, because
overlapping records gradients on a side stream (``Tensor.record_stream``), which CPU tensors lack.
"""

from __future__ import annotations

import logging
import math
import types
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

_APPLIED: list[str] = []


def _fix_lowlevelzero_sanity() -> None:
    # LowLevelZeroOptimizer._sanity_checks asserts get_accelerator().name in ["cuda", "npu"];
    # the rest of ZeRO-1/2 works on CPU/gloo, so keep only the dtype check of the original.
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    def _sanity_checks(self: Any) -> None:
        for group in self.optim.param_groups:
            for p in group["params"]:
                if not getattr(p, "skip_zero_check", False) and p.dtype != self._dtype:
                    raise AssertionError(f"Parameters are expected to have dtype {self._dtype}, got {p.dtype}")

    LowLevelZeroOptimizer._sanity_checks = _sanity_checks


def _cpu_manual_seed(self: Any, seed: int) -> None:
    torch.manual_seed(seed)


def _fix_cpu_accelerator() -> None:
    # CpuAccelerator raises for stream/event APIs that ZeRO (bucket_store.py:22,
    # low_level_optim.py:345-349,470,492) and checkpoint_io/utils.py:830 call unconditionally;
    # torch.cpu provides no-op equivalents. Its rng getter passes a device to
    # torch.get_rng_state (TypeError on CPU) and manual_seed raises, both used by shardformer's
    # Randomizer (shardformer/layer/utils.py:158-161) for tensor parallel dropout. On CPU the
    # "device" generator is the CPU generator. pipeline/p2p.py:485-513 allocates buffers on
    # current_device(), which must therefore be a usable device, not an index.
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    patches: dict[str, Callable[..., Any]] = {
        "Stream": lambda self, device=None, priority=0, **kw: torch.cpu.Stream(),
        "Event": lambda self, enable_timing=False, blocking=False, interprocess=False: torch.cpu.Event(),
        "current_stream": lambda self, device=None: torch.cpu.current_stream(),
        "default_stream": lambda self, device=None: torch.cpu.current_stream(),
        "stream": lambda self, stream_: torch.cpu.stream(stream_),
        "synchronize": lambda self, device=None: None,
        "empty_cache": lambda self: None,
        "get_rng_state": lambda self, device=None: torch.get_rng_state(),
        "set_rng_state": lambda self, new_state, device=None: torch.set_rng_state(new_state),
        "manual_seed": _cpu_manual_seed,
        "current_device": lambda self: torch.device("cpu"),
    }
    for name, fn in patches.items():
        setattr(CpuAccelerator, name, fn)


def _check_for_nccl_backend(group: Any) -> bool:
    """colossalai/pipeline/p2p.py:151 without the two names torch lacks: ``is_hccl_available()`` and
    ``Backend.HCCL`` exist only with torch_npu (Ascend), so only an NCCL group counts."""
    from torch.distributed import distributed_c10d as c10d

    pg = group or c10d._get_default_group()
    if c10d._GLOO_AVAILABLE:
        while isinstance(pg, c10d._ProcessGroupWrapper):
            pg = pg.wrapped_pg
    return c10d.is_nccl_available() and pg.name() == c10d.Backend.NCCL


def _fix_hccl_available() -> bool:
    # pipeline/p2p.py:159 evaluates torch.distributed.is_hccl_available() in every p2p send/recv
    # (gone from torch 2.13 and absent from 2.5.1), then, on a torch built with NCCL (every CUDA
    # wheel, e.g. PyPI's torch 2.5.1, also on a machine without a GPU) and a gloo group, reads
    # c10d.Backend.HCCL, which only torch_npu registers. p2p._check_device looks the function up by
    # name at each call, so replacing the module attribute is enough. (Setting Backend.HCCL instead
    # would break torch_npu's own register_backend("hccl"), which asserts the name is new.)
    from colossalai.pipeline import p2p

    p2p._check_for_nccl_hccl_backend = _check_for_nccl_backend
    if hasattr(torch.distributed, "is_hccl_available"):
        return False
    torch.distributed.is_hccl_available = lambda: False  # type: ignore[attr-defined]
    return True


class TorchCPUAdamOptimizer:
    """Pure-torch stand-in for the C++ ``CPUAdamOptimizer`` (kernel/x86/cpu_adam.cpp)."""

    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 adamw_mode: bool) -> None:
        self.adamw_mode = adamw_mode

    @torch.no_grad()
    def step(self, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
             bias_correction: bool, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
             exp_avg_sq: torch.Tensor, div_scale: float = -1) -> None:
        # Same op order as torch.optim.AdamW/Adam (single-tensor path), in fp32, written back.
        p = param.float()
        g = grad.float()
        m, v = exp_avg.float(), exp_avg_sq.float()
        if div_scale > 0:
            g = g / div_scale
        if weight_decay != 0:
            if self.adamw_mode:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1 = 1 - beta1**step if bias_correction else 1.0
        bc2 = 1 - beta2**step if bias_correction else 1.0
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bc1)
        for dst, src in ((param, p), (exp_avg, m), (exp_avg_sq, v)):
            if dst is not src and dst.data_ptr() != src.data_ptr():
                dst.copy_(src)


def _fix_hybrid_adam_kernel() -> None:
    # CPUAdam.__init__ (nn/optimizer/cpu_adam.py:80) calls CPUAdamLoader().load(), which asserts
    # "No usable kernel" without CUDA (kernel_loader.py:75); on ARM it would JIT-compile with a
    # lock that can hang concurrent jobs. Always hand back the pure-torch kernel instead.
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    kernel = types.SimpleNamespace(CPUAdamOptimizer=TorchCPUAdamOptimizer)
    CPUAdamLoader.load = lambda self, ext_name=None: kernel  # type: ignore[method-assign]


def apply_cpu_compat() -> list[str]:
    """Apply the CPU fixes once per process; return the names of the fixes in effect.

    Returns [] (and patches nothing) when CUDA is available. Safe to call repeatedly.
    """
    if torch.cuda.is_available():
        return []
    if not _APPLIED:
        _fix_lowlevelzero_sanity()
        _APPLIED.append("lowlevelzero_sanity")
        _fix_cpu_accelerator()
        _APPLIED.append("cpu_accelerator")
        if _fix_hccl_available():
            _APPLIED.append("hccl_available")
        _fix_hybrid_adam_kernel()
        _APPLIED.append("hybrid_adam_torch_kernel")
        logger.info("ColossalAI CPU compatibility fixes applied: %s", ", ".join(_APPLIED))
    return list(_APPLIED)
