"""The MLP's first product and exact GELU as one operator, with a fused backward on CUDA.

For compiled training (``model.compile``) the first half of every ViT MLP, ``gelu(x @ W1.T + b1)``,
runs as the custom operator ``vit_train::linear_gelu``. Forward: the product (cuBLAS, bias in its
epilogue) and torch's exact GELU; the pre-activation ``h`` is an output, so it is saved and the
activation is never recomputed (inductor's partitioner would otherwise recompute the GELU for the
second product's weight gradient). Backward: ``grad_h = grad * gelu'(h)`` and the bias gradient
``grad_h.sum(0)`` in one pass over the two 310 MB tensors per layer (ViT-B/16, batch 256) by a
Triton kernel that writes ``grad_h`` and per-block column sums, then the two products. Autograd
and inductor run the GELU gradient and the bias sum as two kernels (the sum re-reads ``grad_h``;
1.6 ms per step on an H100, BENCHMARKS.md), or inductor re-derives the GELU gradient inside the sum.

Same maths as ``F.gelu(F.linear(x, W1, b1))``: the GELU gradient is computed in fp32 with torch's
formula and rounded to the tensors' dtype; the bias gradient is the fp32 sum of the rounded
``grad_h`` values, as autograd's. Without CUDA (or without Triton) the backward is the same two
steps in torch ops. Autocast: the caller casts, as ``F.linear`` would under autocast
(:func:`linear_gelu_autocast`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

# Triton launch: (rows per program, rows per tile, columns per tile, warps, pipelined loads). The
# fastest of 26 tried on an H100 at ViT-B/16's shape (runs 22-23): 0.344 ms for 50,432 x 3,072 bf16,
# vs 0.427 ms for torch's GELU-gradient kernel plus the bias sum.
CONFIG = (512, 32, 128, 4, 3)


@functools.lru_cache(maxsize=1)
def _triton_kernel() -> Any:
    """The fused GELU-gradient + column-sum kernel, built on first use (Triton imported lazily:
    CPU installs have no Triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gelu_grad_colsum(g_ptr, h_ptr, dh_ptr, part_ptr, M, N, ROWS: tl.constexpr, BM: tl.constexpr,
                         BN: tl.constexpr, STAGES: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        cols = pid_n * BN + tl.arange(0, BN)
        cmask = cols < N
        # per-thread fp32 partial sums, reduced across rows once at the end (not per tile)
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for r0 in tl.range(0, ROWS, BM, num_stages=STAGES):
            rows = pid_m * ROWS + r0 + tl.arange(0, BM)
            mask = (rows[:, None] < M) & cmask[None, :]
            offs = rows[:, None].to(tl.int64) * N + cols[None, :]
            g = tl.load(g_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
            h = tl.load(h_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
            # torch's exact GELU gradient (GeluBackward, erf form), in fp32 as torch's opmath
            cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
            pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
            dh = (g * (cdf + h * pdf)).to(dh_ptr.dtype.element_ty)
            tl.store(dh_ptr + offs, dh, mask=mask)
            # the bias gradient sums the rounded values, as autograd's sum over grad_h does
            acc += dh.to(tl.float32)
        tl.store(part_ptr + pid_m * N + cols, tl.sum(acc, axis=0), mask=cmask)

    return gelu_grad_colsum


def _use_triton(t: torch.Tensor) -> bool:
    if not t.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def gelu_grad_and_bias_grad(grad: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad * gelu'(h), that summed over rows in fp32)`` for 2-D ``grad``/``h`` of one shape."""
    if not _use_triton(h):
        dh = torch.ops.aten.gelu_backward.default(grad, h)
        return dh, dh.sum(0, dtype=torch.float32)
    import triton

    grad, h = grad.contiguous(), h.contiguous()
    m, n = h.shape
    dh = torch.empty_like(h)
    rows, bm, bn, warps, stages = CONFIG
    part = torch.empty((triton.cdiv(m, rows), n), device=h.device, dtype=torch.float32)
    grid = (part.shape[0], triton.cdiv(n, bn))
    _triton_kernel()[grid](grad, h, dh, part, m, n, ROWS=rows, BM=bm, BN=bn, STAGES=stages, num_warps=warps)
    return dh, part.sum(0)


@torch.library.custom_op("vit_train::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu(h), h)`` with ``h = x @ weight.T + bias``; ``h`` is returned to be saved for the backward."""
    h = F.linear(x, weight, bias)
    return torch.ops.aten.gelu.default(h), h


@linear_gelu.register_fake
def _linear_gelu_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.new_empty((*x.shape[:-1], weight.shape[0]))
    return torch.empty_like(h), h


@torch.library.custom_op("vit_train::linear_gelu_backward", mutates_args=())
def linear_gelu_backward(grad: torch.Tensor, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``gelu(x @ weight.T + bias)`` for x, weight and bias."""
    n, k = weight.shape
    dh, db = gelu_grad_and_bias_grad(grad.reshape(-1, n), h.reshape(-1, n))
    grad_x = (dh @ weight).view(x.shape)
    grad_w = dh.t() @ x.reshape(-1, k)
    return grad_x, grad_w, db.to(bias_dtype)


@linear_gelu_backward.register_fake
def _linear_gelu_backward_fake(grad: torch.Tensor, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               bias_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],), dtype=bias_dtype)


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, weight, bias = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], x, weight)
    ctx.bias_dtype = bias.dtype


def _backward(ctx: Any, grad: torch.Tensor | None, _grad_h: None) -> tuple[torch.Tensor | None, ...]:
    if grad is None:
        return None, None, None
    h, x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = linear_gelu_backward(grad, h, x, weight, ctx.bias_dtype)
    need_x, need_w, need_b = ctx.needs_input_grad
    return grad_x if need_x else None, grad_w if need_w else None, grad_b if need_b else None


linear_gelu.register_autograd(_backward, setup_context=_setup_context)


def linear_gelu_autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(F.linear(x, weight, bias))`` through :func:`linear_gelu`, with the product's inputs cast
    as autocast would cast them for ``F.linear`` (a custom operator is not cast by autocast itself)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight, bias = x.to(dt), weight.to(dt), bias.to(dt)
    return linear_gelu(x, weight, bias)[0]
