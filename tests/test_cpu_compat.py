"""Tests for vit_train.patches.cpu_compat: each fix is exercised with the real ColossalAI 0.5.0.

Every test runs this file as a child process (``python tests/test_cpu_compat.py <scenario>``,
under ``torchrun --nproc_per_node 2`` for the distributed ones), so the monkeypatches never leak
into the pytest process. A child first shows the unpatched call fails, then applies
``apply_cpu_compat()``, trains a tiny ViT for two steps and compares its losses with plain
single-process PyTorch (same init, same batch on every rank, torch AdamW). Rank 0 prints one
``CHILD_RESULT <json>`` line that the test checks; children leave through ``clean_exit``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


REPO = Path(__file__).resolve().parents[1]
LR, WD, STEPS = 1e-3, 0.01, 2
LOSS_TOL = 1e-5  # fp32; observed differences are ~1e-7


# --------------------------------------------------------------------------- parent side


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_child(scenario: str, nproc: int, timeout: float = 120.0) -> dict[str, Any]:
    if nproc == 1:
        cmd = [sys.executable, __file__, scenario]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, scenario]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{scenario}: exit {proc.returncode}\n{out[-6000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")]
    assert len(lines) == 1, out[-6000:]
    result: dict[str, Any] = json.loads(lines[0][len("CHILD_RESULT "):])
    return result


def _check_losses(result: dict[str, Any]) -> None:
    assert result["applied"] == ["lowlevelzero_sanity", "cpu_accelerator", "hccl_available",
                                 "hybrid_adam_torch_kernel"]
    for name, losses in result["losses"].items():
        assert len(losses) == STEPS, name
        assert losses == pytest.approx(result["reference"], abs=LOSS_TOL, rel=0), name


def test_fix1_lowlevelzero_stage1_and_stage2() -> None:
    r = run_child("lowlevelzero", nproc=2)
    assert "device is required" in r["unpatched_error"]
    assert set(r["losses"]) == {"zero1", "zero2"}
    _check_losses(r)


def test_fix2_cpu_accelerator_tensor_parallel() -> None:
    r = run_child("tp2", nproc=2)
    assert r["unpatched_errors"]["get_rng_state"].startswith("TypeError")
    assert r["unpatched_errors"]["current_stream"].startswith("RuntimeError")
    assert r["unpatched_errors"]["current_device"].startswith("RuntimeError")
    assert r["unpatched_errors"]["manual_seed"].startswith("RuntimeError")
    assert r["tp_sharded"], "the attention query weight was not split over the 2 ranks"
    _check_losses(r)


def test_fix3_hccl_pipeline_parallel() -> None:
    r = run_child("pp2", nproc=2)
    assert r["unpatched_error"].startswith("AttributeError")
    # torch 2.13 CPU: is_hccl_available is gone; a CUDA build (torch 2.5.1 from PyPI): Backend.HCCL is missing
    assert "is_hccl_available" in r["unpatched_error"] or "has no attribute 'HCCL'" in r["unpatched_error"]
    _check_losses(r)


def test_fix4_hybrid_adam_matches_torch() -> None:
    r = run_child("hybrid_adam", nproc=1)
    assert "No usable kernel" in r["unpatched_error"]
    assert r["idempotent"]
    assert set(r["max_abs_diff"]) == {"adamw_wd", "adam_l2", "adamw_no_bias_correction", "adamw_loss_scale"}
    for name, diff in r["max_abs_diff"].items():
        assert diff <= 1e-6, (name, diff)


def test_apply_is_noop_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vit_train.patches import cpu_compat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.apply_cpu_compat() == []


# --------------------------------------------------------------------------- child side


def _tiny_vit(num_labels: int = 3) -> Any:
    from tests.train_utils import tiny_vit

    return tiny_vit(num_labels)


def _batch() -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(4, 3, 32, 32, generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}


def _reference_losses(num_labels: int = 3) -> list[float]:
    import torch

    model, batch = _tiny_vit(num_labels), _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _train(booster: Any, plugin: Any, pipeline: bool = False, num_labels: int = 3) -> tuple[list[float], Any]:
    import torch
    import torch.distributed as dist

    model = _tiny_vit(num_labels)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    model, opt, *_ = booster.boost(model, opt)
    batch, losses = _batch(), []
    for _ in range(STEPS):
        if pipeline:
            out = booster.execute_pipeline(iter([batch]), model, lambda outputs, inputs: outputs.loss, opt,
                                           return_loss=True)
            loss = out["loss"]  # only the last stage has it; broadcast it from there
            t = torch.zeros(1) if loss is None else loss.detach().reshape(1).float()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            value = t.item()
        else:
            loss = model(**batch).loss
            booster.backward(loss, opt)
            value = loss.item()
        opt.step()
        opt.zero_grad()
        losses.append(value)
    return losses, model


def _error(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _child_hybrid_adam() -> dict[str, Any]:
    import torch
    from colossalai.nn.optimizer import HybridAdam

    from vit_train.patches.cpu_compat import apply_cpu_compat

    res: dict[str, Any] = {"unpatched_error": _error(lambda: HybridAdam([torch.nn.Parameter(torch.zeros(2))]))}
    res["applied"] = apply_cpu_compat()
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    load = CPUAdamLoader.load
    res["idempotent"] = apply_cpu_compat() == res["applied"] and CPUAdamLoader.load is load
    cases = {  # name: (HybridAdam kwargs, torch optimizer class, torch kwargs, loss scale)
        "adamw_wd": (dict(adamw_mode=True, weight_decay=0.1), torch.optim.AdamW, dict(weight_decay=0.1), -1.0),
        "adam_l2": (dict(adamw_mode=False, weight_decay=0.1), torch.optim.Adam, dict(weight_decay=0.1), -1.0),
        "adamw_no_bias_correction": (dict(bias_correction=False, weight_decay=0.05), None, {}, -1.0),
        "adamw_loss_scale": (dict(weight_decay=0.1), torch.optim.AdamW, dict(weight_decay=0.1), 128.0),
    }
    res["max_abs_diff"] = {}
    for name, (hkw, tcls, tkw, scale) in cases.items():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((37, 5), (7,), (3, 4, 5))]
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        hyb = HybridAdam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, **hkw)
        if tcls is None:  # bias_correction=False: Adam without bias correction, by hand
            tcls, tkw = _NoBiasCorrectionAdamW, dict(weight_decay=0.05)
        ref = tcls(qs, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, **tkw)
        for _ in range(5):
            for p, q in zip(ps, qs):
                g = torch.randn_like(p)
                p.grad, q.grad = g * (scale if scale > 0 else 1.0), g.clone()
            hyb.step(div_scale=scale)
            ref.step()
        res["max_abs_diff"][name] = max((p - q).abs().max().item() for p, q in zip(ps, qs))
    return res


class _NoBiasCorrectionAdamW:
    """Decoupled-weight-decay Adam without bias correction (the bias_correction=False semantics)."""

    def __init__(self, params: list[Any], lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float) -> None:
        import torch

        self.params, self.lr, self.betas, self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                p.mul_(1 - self.lr * self.wd)
                m.mul_(self.betas[0]).add_(p.grad, alpha=1 - self.betas[0])
                v.mul_(self.betas[1]).addcmul_(p.grad, p.grad, value=1 - self.betas[1])
                p.addcdiv_(m, v.sqrt().add_(self.eps), value=-self.lr)


def _child_distributed(scenario: str) -> dict[str, Any]:
    import colossalai
    import torch.distributed as dist
    from colossalai.accelerator import get_accelerator
    from colossalai.booster import Booster
    from colossalai.booster.plugin import HybridParallelPlugin, LowLevelZeroPlugin

    from vit_train.patches.cpu_compat import apply_cpu_compat

    colossalai.launch_from_torch(seed=0)
    assert dist.get_backend() == "gloo" and dist.get_world_size() == 2
    # Tensor parallel shards the classifier by columns (Linear1D_Col): num_labels must be a
    # multiple of tp_size (or smaller than it), so the TP test uses 4 labels instead of 3.
    num_labels = 4 if scenario == "tp2" else 3
    res: dict[str, Any] = {"losses": {}}
    if scenario == "lowlevelzero":
        plugin = LowLevelZeroPlugin(stage=1, precision="fp32", overlap_communication=False)
        res["unpatched_error"] = _error(lambda: _train(Booster(plugin=plugin), plugin))
        res["applied"] = apply_cpu_compat()
        for stage in (1, 2):
            plugin = LowLevelZeroPlugin(stage=stage, precision="fp32", overlap_communication=False)
            res["losses"][f"zero{stage}"], _ = _train(Booster(plugin=plugin), plugin)
    elif scenario == "tp2":
        acc = get_accelerator()
        res["unpatched_errors"] = {name: _error(getattr(acc, name))
                                   for name in ("get_rng_state", "current_stream", "current_device")}
        res["unpatched_errors"]["manual_seed"] = _error(lambda: acc.manual_seed(0))
        res["applied"] = apply_cpu_compat()
        plugin = HybridParallelPlugin(tp_size=2, pp_size=1, precision="fp32", zero_stage=0)
        res["losses"]["tp2"], model = _train(Booster(plugin=plugin), plugin, num_labels=num_labels)
        q = model.unwrap().vit.encoder.layer[0].attention.attention.query.weight
        res["tp_sharded"] = tuple(q.shape) == (16, 32)
    elif scenario == "pp2":
        from colossalai.pipeline.p2p import _check_for_nccl_hccl_backend

        res["unpatched_error"] = _error(lambda: _check_for_nccl_hccl_backend(None))
        res["applied"] = apply_cpu_compat()
        plugin = HybridParallelPlugin(tp_size=1, pp_size=2, num_microbatches=2, precision="fp32", zero_stage=0)
        res["losses"]["pp2"], _ = _train(Booster(plugin=plugin), plugin, pipeline=True)
    else:
        raise ValueError(scenario)
    res["reference"] = _reference_losses(num_labels)
    return res


def _child_main(scenario: str) -> None:
    import logging

    from vit_train.distributed.shutdown import clean_exit

    logging.basicConfig(level=logging.INFO)
    try:
        res = _child_hybrid_adam() if scenario == "hybrid_adam" else _child_distributed(scenario)
        if int(os.environ.get("RANK", "0")) == 0:
            print("CHILD_RESULT " + json.dumps(res), flush=True)
    except BaseException:
        import traceback

        traceback.print_exc()
        clean_exit(1)
    if os.environ.get("CPU_COMPAT_PLAIN_EXIT") == "1":  # for investigating the exit abort only
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(0)
    clean_exit(0)


if __name__ == "__main__":
    _child_main(sys.argv[1])
