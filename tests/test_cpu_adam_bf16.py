"""vit_train.patches.cpu_adam_bf16: HybridAdam divides bf16 gradients of CPU parameters by div_scale.

Gemini with optimizer offload in bf16 hands HybridAdam CPU fp32 masters with bf16 gradients and
folds gradient clipping into ``div_scale``; ColossalAI 0.5.0 dropped that divisor on this path. Real
ColossalAI HybridAdam on the CPU (its C++ kernel replaced by vit_train's pure-torch one, cpu_compat
fix 4, which divides as the C++ kernel does); reference: torch AdamW on the divided gradients.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.train_utils import REPO, child_env

# Gradient divisors of three steps, as Gemini's clipping produces them (-1 = nothing to divide).
DIV_SCALES = (-1.0, 8.0, 2.0)
CHILD = r"""
import json, sys, torch
from vit_train.patches.cpu_compat import apply_cpu_compat
apply_cpu_compat()
if sys.argv[1] == "fix":
    from vit_train.patches.cpu_adam_bf16 import apply_cpu_adam_bf16_fix
    assert apply_cpu_adam_bf16_fix()
from colossalai.nn.optimizer import HybridAdam
out = {}
for dtype in ("bfloat16", "float32"):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(256, generator=g))
    opt = HybridAdam([p], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5, adamw_mode=True)
    for div in json.loads(sys.argv[2]):
        # bf16-exact gradient values, so both dtypes carry the same numbers; the gradient is set the way
        # GeminiOptimizer._set_grad_ptr does it (through .data), since torch refuses a bf16 .grad on fp32
        grad = torch.randn(256, generator=g).to(torch.bfloat16).to(getattr(torch, dtype))
        master = p.data
        p.data = grad
        p.grad = p.data
        p.data = master
        opt.step(div_scale=div)
    out[dtype] = p.detach().tolist()
print(json.dumps(out))
"""


def _reference() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(256, generator=g))
    opt = torch.optim.AdamW([p], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    for div in DIV_SCALES:
        grad = torch.randn(256, generator=g).to(torch.bfloat16).float()
        p.grad = grad / div if div > 0 else grad
        opt.step()
    return p.detach()


def _run(mode: str) -> dict[str, torch.Tensor]:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(DIV_SCALES)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: torch.tensor(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def test_bf16_gradients_of_cpu_parameters_are_divided_like_fp32_ones() -> None:
    ref = _reference()
    fixed = _run("fix")
    assert torch.allclose(fixed["float32"], ref, atol=1e-6), "the fp32 path (C++-kernel semantics) is the reference"
    assert torch.allclose(fixed["bfloat16"], ref, atol=1e-6), (fixed["bfloat16"] - ref).abs().max()


def test_colossalai_as_shipped_drops_the_divisor_on_the_bf16_path() -> None:
    """The bug this patch exists for: without it the bf16 path ignores div_scale (no clipping)."""
    ref = _reference()
    shipped = _run("shipped")
    assert torch.allclose(shipped["float32"], ref, atol=1e-6)
    assert (shipped["bfloat16"] - ref).abs().max() > 1e-3
