"""vit_train.patches.amp_loops: ColossalAI's mixed-precision optimizer steps with all-parameter kernels and
trains bit-identically to the stock per-parameter loops.

A child under ``torchrun --nproc_per_node 2`` (gloo, CPU) trains a tiny ViT in bf16 through
HybridParallelPlugin (tp=1, dp=2 and tp=2: the gradient norm then spans the TP group) with gradient
clipping that engages, weight decay groups and several steps, first with ColossalAI's loops, then with
the fix, from the same initial weights on the same batches. Every bf16 working weight and every fp32
master weight must be equal bit for bit, the gradient norms equal, and the clipping must have scaled
the gradients. With the fix, the step must read nothing back to the host (on a GPU that read is a
wait for the whole backward): ``Tensor.item``/``__float__``/``__bool__`` raise during the step,
except inside the wrapped optimizer's own ``step`` (torch's AdamW reads its CPU step counters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STEPS = 3


def test_fix_is_bit_identical_to_colossalai_loops() -> None:
    from tests.train_utils import run_torchrun_child

    r = run_torchrun_child(Path(__file__), nproc=2, timeout=240)
    assert r["applied"]
    for layout in ("tp1", "tp2"):
        res = r[layout]
        assert res["clipped_every_step"], res  # the scaling path ran
        assert res["moved"] > 1e-3, res  # the weights trained
        assert res["working_mismatches"] == [] and res["master_mismatches"] == [], res
        assert res["n_params"] > 10
        assert res["host_reads_in_step"] == 0 and res["norm_is_tensor"], res
    assert r["stock_host_reads_in_step"] > 0  # the guard sees the read ColossalAI's own norm makes


# --------------------------------------------------------------------------- child side


def _model() -> Any:
    from tests.train_utils import tiny_vit

    return tiny_vit(num_labels=4)


class _HostReadGuard:
    """Counts Tensor.item/__float__/__bool__ calls while armed (each raises for a GPU tensor's wait)."""

    def __init__(self) -> None:
        import torch

        self.armed, self.reads = False, 0
        for name in ("item", "__float__", "__bool__"):
            orig = getattr(torch.Tensor, name)

            def counted(t: Any, *a: Any, _orig: Any = orig, **k: Any) -> Any:
                self.reads += self.armed
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, counted)

    def step(self, opt: Any) -> None:
        inner = opt.optim.step

        def unguarded(*a: Any, **k: Any) -> Any:
            self.armed = False
            try:
                return inner(*a, **k)
            finally:
                self.armed = True

        opt.optim.step = unguarded
        self.armed = True
        try:
            opt.step()
        finally:
            self.armed, opt.optim.step = False, inner


def _train(tp: int, guard: "_HostReadGuard") -> tuple[dict[str, Any], dict[str, Any], list[float], float, Any]:
    import torch
    from colossalai.booster import Booster
    from colossalai.booster.plugin import HybridParallelPlugin

    plugin = HybridParallelPlugin(tp_size=tp, pp_size=1, precision="bf16", zero_stage=0, max_norm=0.05)
    booster = Booster(plugin=plugin)
    model = _model()
    init = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters()]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.5},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    model, opt, *_ = booster.boost(model, torch.optim.AdamW(groups, lr=1e-2))
    g = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(STEPS):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
        booster.backward(model(pixel_values=x.bfloat16(), labels=y).loss, opt)
        guard.step(opt)
        raw_norm = opt.get_grad_norm()
        norms.append(float(raw_norm))
        opt.zero_grad()
    working = {n: p.detach().clone() for n, p in model.unwrap().named_parameters()}
    masters = {n: opt.working_to_master_map[p].detach().clone() for n, p in model.unwrap().named_parameters()}
    moved = max((working[n].float() - init[n][tuple(slice(0, s) for s in working[n].shape)]).abs().max().item()
                for n in working)
    return working, masters, norms, moved, raw_norm


def _child() -> dict[str, Any]:
    import colossalai
    import torch

    from vit_train.patches.amp_loops import apply_amp_loop_fix
    from vit_train.patches.cpu_compat import apply_cpu_compat

    colossalai.launch_from_torch(seed=0)
    apply_cpu_compat()
    guard = _HostReadGuard()
    stock = {tp: _train(tp, guard) for tp in (1, 2)}
    res: dict[str, Any] = {"stock_host_reads_in_step": guard.reads, "applied": apply_amp_loop_fix()}
    for tp in (1, 2):
        guard.reads = 0
        working, masters, norms, moved, raw = _train(tp, guard)
        w0, m0, n0, _, _ = stock[tp]
        res[f"tp{tp}"] = {
            "n_params": len(working),
            "working_mismatches": [n for n in w0 if not torch.equal(w0[n], working[n])],
            "master_mismatches": [n for n in m0 if not torch.equal(m0[n], masters[n])],
            "clipped_every_step": all(n > 0.05 for n in n0) and norms == n0,
            "moved": moved,
            "host_reads_in_step": guard.reads,
            "norm_is_tensor": isinstance(raw, torch.Tensor),
        }
    return res


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
