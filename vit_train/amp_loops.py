"""One kernel per step phase instead of one per parameter in ColossalAI's mixed-precision optimizer.

``MixedPrecisionOptimizer`` (HybridParallelPlugin without ZeRO, in bf16/fp16) keeps fp32 master
weights and, every step, casts each gradient to fp32, scales each one for clipping and copies each
master back into its bf16 working weight: three Python loops of one small kernel per parameter. On
one H100, ``hybrid+compile`` kept the GPU busy 71 ms of an 81.5 ms ViT-B/16 step; the loops run after
the host has waited for the gradient norm, so the GPU idles through all of them (BENCHMARKS.md).

:func:`apply_amp_loop_fix` replaces ``step`` and ``_unscale_and_clip_grads`` with versions that do the
same arithmetic on all parameters at once: one concatenation + cast for the gradients (each master's
gradient a view of that buffer), ``torch._foreach_mul_`` for the scaling, ``torch._foreach_copy_`` for
the weights. The gradient norm (with its tensor/pipeline-parallel reductions), the overflow check and
the optimizer step are ColossalAI's own calls. ``tests/test_amp_loops.py`` checks that training with
and without it gives bit-identical weights. Applied only to the ColossalAI version it was written for.
"""

from __future__ import annotations

from typing import Any

import torch

from vit_train.colossal_patch import patch_once


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


def _unscale_and_clip_grads(self: Any, total_norm: float) -> None:
    div_scale = 1.0 if self.mixed_precision is None else self.mixed_precision.get_grad_div_scale()
    if self.max_norm > 0.0:
        clip = ((total_norm / div_scale) + 1e-6) / self.max_norm
        if clip > 1:
            div_scale = clip * div_scale
    grads = [p.grad.data for group in self.param_groups for p in group["params"] if p.grad is not None]
    if grads and div_scale != 1.0:  # multiplying by 1.0 changes nothing
        torch._foreach_mul_(grads, 1.0 / div_scale)


def apply_amp_loop_fix() -> bool:
    """Patch ``MixedPrecisionOptimizer`` once per process; False if this ColossalAI is another version."""
    from colossalai.amp.naive_amp.mixed_precision_optimizer import MixedPrecisionOptimizer

    return patch_once("mixed-precision loop fix", MixedPrecisionOptimizer,
                      lambda: {"step": _step, "_unscale_and_clip_grads": _unscale_and_clip_grads})
