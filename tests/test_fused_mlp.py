"""vit_train.kernels.fused_mlp: the MLP's first product + exact GELU as one operator computes what
``F.gelu(F.linear(x, W, b))`` computes, forward and backward, eager and compiled, with autocast.

The CUDA backward runs a Triton kernel; CI has no GPU, so that kernel runs here in Triton's
interpreter (``TRITON_INTERPRET=1``, CPU tensors, numpy arithmetic) in a child process, on shapes
whose rows and columns do not divide its tiles. The interpreter rounds bf16 stores by truncation, so
bf16 values are compared to about one unit in the last place, fp32 ones to a few. On the H100 the
kernel was checked against torch's kernels on the real GPU (BENCHMARKS.md, run 22).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit_train.kernels.fused_mlp import linear_gelu_autocast

REPO = Path(__file__).resolve().parents[1]


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 7, 16, generator=g) * 2).to(dtype).requires_grad_()
    w = (torch.randn(40, 16, generator=g) * 0.3).to(dtype).requires_grad_()
    b = torch.randn(40, generator=g).to(dtype).requires_grad_()
    return x, w, b, torch.randn(3, 7, 40, generator=g).to(dtype)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_values_and_gradients_as_autograd(dtype: torch.dtype, compiled: bool) -> None:
    x, w, b, go = _inputs(dtype)
    ref = F.gelu(F.linear(x, w, b))
    ref_grads = torch.autograd.grad(ref, (x, w, b), go)
    fn = torch.compile(linear_gelu_autocast) if compiled else linear_gelu_autocast
    out = fn(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b), go)
    assert torch.equal(out, ref)
    for name, a, r in zip("xwb", grads, ref_grads):
        assert a.dtype == r.dtype and torch.equal(a, r), name
    assert grads[2].abs().max() > 0  # the bias gradient is not vacuous


def test_autocast_casts_like_linear() -> None:
    """Under autocast a custom operator is not cast by itself; the wrapper casts as F.linear would,
    and the fp32 parameters get fp32 gradients equal to autograd's through F.linear + F.gelu."""
    x, w, b, _ = _inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.gelu(F.linear(x, w, b))
        out = linear_gelu_autocast(x, w, b)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    for a, r in zip(torch.autograd.grad(out.float().sum(), (x, w, b)), torch.autograd.grad(ref.float().sum(), (x, w, b))):
        assert a.dtype == torch.float32 and torch.equal(a, r)


def test_operator_registrations() -> None:
    """torch.library's checks of the operators (schema, fake kernels, autograd registration)."""
    x, w, b, go = _inputs(torch.float32)
    torch.library.opcheck(torch.ops.vit_train.linear_gelu.default, (x, w, b))
    h = F.linear(x, w, b).detach()
    torch.library.opcheck(torch.ops.vit_train.linear_gelu_backward.default, (go, h, x.detach(), w.detach(), torch.float32))


def _interpreter_child() -> None:
    from vit_train.kernels import fused_mlp

    fused_mlp._use_triton = lambda t: True  # the kernel on CPU tensors, through the interpreter
    out = []
    g = torch.Generator().manual_seed(7)
    for m, n, dtype in [(1100, 200, torch.bfloat16), (700, 300, torch.float32), (1, 5, torch.float32)]:
        grad = torch.randn(m, n, generator=g).to(dtype)
        h = (torch.randn(m, n, generator=g) * 3).to(dtype)
        dh, db = fused_mlp.gelu_grad_and_bias_grad(grad, h)
        ref = torch.ops.aten.gelu_backward.default(grad, h)
        # error in units of the dtype's epsilon times |incoming gradient| (|gelu'| <= 1.13; it crosses
        # zero near h = -0.75, where a relative error would mean nothing)
        unit = torch.finfo(dtype).eps * grad.float().abs().clamp_min(1e-3)
        db_ref = ref.float().sum(0)
        out.append({"shape": [m, n], "dtype": str(dtype), "dh_shape": list(dh.shape), "db_shape": list(db.shape),
                    "dh_max_units": float(((dh.float() - ref.float()).abs() / unit).max()),
                    "db_max_rel": float(((db - db_ref).abs() / ref.float().abs().sum(0).clamp_min(1e-3)).max())})
    print("RESULT " + json.dumps(out))


def test_triton_kernel_in_interpreter() -> None:
    import triton  # noqa: F401  (the test extra installs it; CPU installs of the product need none)

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, (proc.stdout + proc.stderr)[-4000:]
    for r in json.loads(lines[0][len("RESULT "):]):
        assert r["dh_shape"] == r["shape"] and r["db_shape"] == r["shape"][1:], r
        # bf16: truncating vs rounding stores differ by at most one unit; fp32: libm vs CUDA-style erf
        assert r["dh_max_units"] <= (2.0 if "bfloat16" in r["dtype"] else 16.0), r
        assert r["db_max_rel"] < (2e-2 if "bfloat16" in r["dtype"] else 1e-5), r


if __name__ == "__main__":
    _interpreter_child()
