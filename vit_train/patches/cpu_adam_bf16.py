"""HybridAdam's CPU path skips gradient clipping (and loss-scale division) for bf16 gradients.

ColossalAI 0.5.0, ``CPUAdam.step`` / ``HybridAdam.step`` (colossalai/nn/optimizer/cpu_adam.py and
hybrid_adam.py): ``step(div_scale)`` receives the gradient divisor, in which ``GeminiOptimizer``
folds gradient clipping (``_get_combined_scale``: loss scale x max(1, grad_norm / max_norm)). For a
parameter on the GPU the fused CUDA kernel divides by it; for a parameter on the CPU with an fp32 or
fp16 gradient the C++ kernel does (``grad /= loss_scale``, cpu_adam.cpp). For a parameter on the CPU
with a **bf16** gradient ("cpu adam kernel does not support bf16 now") the step calls
``torch_adam_update``, which has no divisor argument: the division is dropped.

That is exactly Gemini with ``offload_optim_frac > 0`` and ``precision=bf16``: the fp32 master chunk
sits on the CPU and ``GeminiOptimizer._set_grad_ptr`` hands the optimizer the bf16 gradient chunk as
its gradient. So every offloaded parameter was updated with unclipped gradients while the bench's
references clip at ``optim.max_grad_norm``: the gemini_offload row left the fp32 loss curve from
step 3 (max loss difference 0.35-1.41 over 10 steps, BENCHMARKS.md) while every other row stayed
close. ColossalAI's own ViT example trains in fp16 and does not hit it.

:func:`apply_cpu_adam_bf16_fix` makes ``step`` remember its ``div_scale`` for the duration of the
call and ``torch_adam_update`` divide the (fp32-cast) gradient by it first, where the C++ kernel
divides: before weight decay and the moments. Every other path is unchanged. A correctness fix, so
``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1`` does not turn it off. ``tests/test_cpu_adam_bf16.py`` fails
without it.
"""

from __future__ import annotations

from typing import Any, Callable

from vit_train.patches.patching import patch_once

_SCALE_ATTR = "_vit_train_div_scale"


def _remembering_step(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: Any, closure: Any = None, div_scale: float = -1, **kw: Any) -> Any:
        setattr(self, _SCALE_ATTR, div_scale)
        try:
            return original(self, closure, div_scale, **kw)
        finally:
            setattr(self, _SCALE_ATTR, -1)

    return step


def apply_cpu_adam_bf16_fix() -> bool:
    """Patch CPUAdam and HybridAdam (each defines its own ``step``); True when applied."""
    from colossalai.nn.optimizer.cpu_adam import CPUAdam
    from colossalai.nn.optimizer.hybrid_adam import HybridAdam

    def cpu_adam_methods() -> dict[str, Any]:
        original_update = CPUAdam.torch_adam_update

        def torch_adam_update(self: Any, data: Any, grad: Any, *args: Any, **kw: Any) -> Any:
            scale = getattr(self, _SCALE_ATTR, -1)
            if scale > 0:
                grad = grad.to(data.dtype) / scale  # as cpu_adam.cpp: divide the fp32 gradient first
            return original_update(self, data, grad, *args, **kw)

        return {"step": _remembering_step(CPUAdam.step), "torch_adam_update": torch_adam_update}

    applied = patch_once("cpu_adam_bf16.CPUAdam", CPUAdam, cpu_adam_methods)
    return patch_once("cpu_adam_bf16.HybridAdam", HybridAdam,
                      lambda: {"step": _remembering_step(HybridAdam.step)}) and applied
