"""Exact GELU as an opaque operator pair for compiled training: its input saved, its output kept.

Under ``torch.compile`` the MLP's GELU is a pointwise op the partitioner may recompute and the
scheduler may fuse into neighbouring reductions. For ViT-B/16 on an H100 it chose both (profile in
BENCHMARKS.md): the backward recomputed the activation for the second product's weight gradient and
computed the first product's bias gradient by re-deriving the GELU gradient from the gradient and
the pre-activation (two 310 MB reads per layer at batch 256) instead of reading the gradient it had
just written (one). With GELU and its gradient as two custom operators, inductor can neither
recompute nor refuse to materialise them: forward reads the pre-activation and writes the
activation (which is saved, +310 MB per layer at batch 256), backward reads the incoming gradient
and the pre-activation and writes the pre-activation gradient, and the bias gradient is a plain
sum over it. Same maths (``aten.gelu``/``aten.gelu_backward``, erf form); eager training gains
nothing from it (autograd already saves the input), so :mod:`vit_train.fast_vit` uses it only
for compiled models.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("vit_train::gelu", mutates_args=())
def gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu.default(x)


@gelu.register_fake
def _gelu_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("vit_train::gelu_backward", mutates_args=())
def gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward.default(grad, x)


@gelu_backward.register_fake
def _gelu_backward_fake(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return gelu_backward(grad, x)


gelu.register_autograd(_backward, setup_context=_setup_context)
