"""One kernel per step phase instead of one per parameter in ColossalAI's mixed-precision optimizer.

``MixedPrecisionOptimizer`` (HybridParallelPlugin without ZeRO, in bf16/fp16) keeps fp32 master
weights and, every step, casts each gradient to fp32, scales each one for clipping and copies each
master back into its bf16 working weight: three Python loops of one small kernel per parameter. On
one H100, ``hybrid+compile`` kept the GPU busy 71 ms of an 81.5 ms ViT-B/16 step; the loops run after
the host has waited for the gradient norm, so the GPU idles through all of them (BENCHMARKS.md).

:func:`apply_amp_loop_fix` replaces ``step`` and ``_unscale_and_clip_grads`` with versions that do the
same arithmetic on all parameters at once: one concatenation + cast for the gradients (each master's
gradient a view of that buffer), ``torch._foreach_mul_`` for the scaling, ``torch._foreach_copy_`` for
the weights. The overflow check and the optimizer step are ColossalAI's own calls.

The 2-norm for clipping (``HybridParallelAMPOptimizer._compute_grad_norm``) was one fp64 copy, norm
and power per gradient, summed on the host and read back with ``.item()``: the host waited for the
whole backward every step before it could queue the optimizer. It is now ``torch._foreach_norm`` in
fp64 (no copies), summed on the GPU, all-reduced over the same tensor/pipeline groups with the same
divisors for replicated and shared parameters, and kept as a GPU tensor; the clip factor is computed
from it on the GPU. The norm is read on the host only when someone asks (the Trainer's log records).

``tests/test_amp_loops.py`` checks that training with and without the fix gives bit-identical
weights and norms, and that the step reads nothing back to the host. Applied only to the ColossalAI
version it was written for.
"""

from __future__ import annotations

from typing import Any

import torch

from vit_train.patches.patching import patch_once


def _cast_gradients(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """master.grad = working.grad in fp32 for every (master, working) pair; working.grad = None."""
    if len({w.grad.dtype for _, w in pairs}) != 1:  # not one buffer: the per-parameter way
        for m, w in pairs:
            m.grad, w.grad = w.grad.data.to(m.dtype), None
        return
    flat = torch.cat([w.grad.reshape(-1) for _, w in pairs]).to(pairs[0][0].dtype)
    for (m, w), g in zip(pairs, flat.split([m.numel() for m, _ in pairs])):
        m.grad, w.grad = g.view_as(m), None


def _step(self: Any, *args: Any, **kwargs: Any) -> Any:
    if self.mixed_precision.should_skip_step():
        self.zero_grad()
        return None
    masters = [(p, self.master_to_working_map[p]) for group in self.optim.param_groups for p in group["params"]]
    masters = [(m, w) for m, w in masters if m is not w]
    with_grad = [(m, w) for m, w in masters if w.grad is not None]
    if with_grad:
        _cast_gradients(with_grad)
    if self.max_norm <= 0:
        total_norm = 0.0
    else:
        pairs = [(self.master_to_working_map[p], p.grad) for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        total_norm = self._compute_grad_norm(pairs)
        self._current_grad_norm = total_norm
    self._unscale_and_clip_grads(total_norm)
    out = self.optim.step(*args, **kwargs)
    if masters:
        torch._foreach_copy_([w.data for _, w in masters], [m.data for m, _ in masters])
    return out


def _unscale_and_clip_grads(self: Any, total_norm: float | torch.Tensor) -> None:
    div_scale = 1.0 if self.mixed_precision is None else self.mixed_precision.get_grad_div_scale()
    grads = [p.grad.data for group in self.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    if isinstance(total_norm, torch.Tensor) and self.max_norm > 0.0:
        # ColossalAI's arithmetic in fp64 on the GPU: divide by div_scale * max(1, clip); the factor is
        # rounded to fp32 as a Python scalar would be.
        clip = ((total_norm.double() / div_scale) + 1e-6) / self.max_norm
        torch._foreach_mul_(grads, (1.0 / (clip.clamp(min=1.0) * div_scale)).float())
        return
    if self.max_norm > 0.0:
        clip = ((total_norm / div_scale) + 1e-6) / self.max_norm
        if clip > 1:
            div_scale = clip * div_scale
    if div_scale != 1.0:  # multiplying by 1.0 changes nothing
        torch._foreach_mul_(grads, 1.0 / div_scale)


def _grad_norm_on_device(self: Any, param_gradient_pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The 2-norm of all gradients as a 0-dim fp64 tensor on their device, without a host read."""
    import torch.distributed as dist
    from colossalai.tensor.d_tensor import is_distributed_tensor

    # ColossalAI divides each squared norm by how many ranks hold the same gradient: tp_size for
    # parameters replicated over the TP group, the number of stages sharing a pipeline-shared one.
    shared: list[tuple[torch.Tensor, int]] = []
    if self.pp_size > 1:
        for sp in self.shared_params:
            if self.stage_manager.stage in sp:
                master = self.working_to_master_map[sp[self.stage_manager.stage]]
                shared.append((master, len(sp)))
    by_divisor: dict[float, list[torch.Tensor]] = {}
    for param, grad in param_gradient_pairs:
        divisor = 1.0
        if self.tp_size > 1 and not is_distributed_tensor(param):
            divisor *= self.tp_size
        for master, n in shared:
            if grad is master.grad:
                divisor *= n
        by_divisor.setdefault(divisor, []).append(grad.data)
    total = sum(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).square().sum() / divisor
                for divisor, grads in by_divisor.items())
    total = total.float()  # ColossalAI reduces an fp32 tensor
    if self.tp_size > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.tp_pg)
    if self.pp_size > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.pp_pg)
    return total.double().sqrt()


def _norm_methods() -> dict[str, Any]:
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelAMPOptimizer

    stock = HybridParallelAMPOptimizer._compute_grad_norm

    def _compute_grad_norm(self: Any, param_gradient_pairs: list, norm_type: int = 2) -> float | torch.Tensor:
        if float(norm_type) != 2.0 or not param_gradient_pairs:  # the max-norm and empty cases as shipped
            return stock(self, param_gradient_pairs, norm_type)
        return _grad_norm_on_device(self, param_gradient_pairs)

    return {"_compute_grad_norm": _compute_grad_norm}


def apply_amp_loop_fix() -> bool:
    """Patch ``MixedPrecisionOptimizer`` and the hybrid plugin's norm once per process; False if this
    ColossalAI is another version."""
    from colossalai.amp.naive_amp.mixed_precision_optimizer import MixedPrecisionOptimizer
    from colossalai.booster.plugin.hybrid_parallel_plugin import HybridParallelAMPOptimizer

    applied = patch_once("mixed-precision loop fix", MixedPrecisionOptimizer,
                         lambda: {"step": _step, "_unscale_and_clip_grads": _unscale_and_clip_grads})
    return applied and patch_once("hybrid gradient norm on the device", HybridParallelAMPOptimizer,
                                  _norm_methods)
