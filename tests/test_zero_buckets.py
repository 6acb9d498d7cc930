"""vit_train.patches.zero_buckets: ZeRO gradient buckets that span parameter groups, with the real ColossalAI.

A child process under ``torchrun --nproc_per_node 2`` (gloo, CPU) trains a tiny ViT with the
project's two parameter groups (weight decay 0.5 on matrices, none on biases/LayerNorm, a large
learning rate so that decay matters) through LowLevelZeroPlugin stage 1 and stage 2, first as
ColossalAI ships it and then with the fix, counting the bucket reductions of each backward (stage 2
reduces from gradient hooks, the path the GPU's overlap_communication takes for both stages). Both
must end with the parameters of plain single-process torch AdamW on the same global batch: a
gradient filed under the wrong group would leave its parameter un-updated or decayed when it
should not be. The counts show the fix does what it is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LR, WD, STEPS, EPS = 1e-2, 0.5, 3, 1e-3
PARAM_TOL = 1e-5


def test_zero_buckets_span_groups_and_train_the_same() -> None:
    from tests.train_utils import run_torchrun_child

    r = run_torchrun_child(Path(__file__), nproc=2, timeout=180)

    assert r["group_switches_in_backward"] >= 10  # the tiny ViT's groups alternate in backward order
    # Stage 2 reduces from per-parameter gradient hooks (as both stages do with overlap_communication,
    # which needs CUDA streams): as shipped, one reduction per group switch; fixed, the whole tiny model
    # fits one bucket. Stage 1 without overlap reduces once after backward, group by group.
    stock, fixed = r["stock"]["2"], r["fixed"]["2"]
    assert stock["reductions_per_backward"] >= r["group_switches_in_backward"], stock
    assert fixed["reductions_per_backward"] == 1, fixed
    for stage in ("1", "2"):
        stock, fixed = r["stock"][stage], r["fixed"][stage]
        for name, diff in (("stock", stock["max_param_diff"]), ("fixed", fixed["max_param_diff"])):
            assert diff <= PARAM_TOL, (stage, name, diff)
    # decay really happened (else the test could not tell the groups apart): a weight moved more than
    # its Adam steps alone would move it, measured against the same run without decay.
    assert r["decay_effect"] > 10 * PARAM_TOL


# --------------------------------------------------------------------------- child side


def _model() -> Any:
    from tests.train_utils import tiny_vit

    return tiny_vit(num_labels=3)


def _groups(model: Any, wd: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _batch() -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)


def _reference(wd: float) -> dict[str, Any]:
    import torch

    model = _model()
    opt = torch.optim.AdamW(_groups(model, wd), lr=LR, eps=EPS)
    x, y = _batch()
    for _ in range(STEPS):
        model(pixel_values=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _zero(stage: int) -> tuple[dict[str, Any], float]:
    import torch
    import torch.distributed as dist
    from colossalai.booster import Booster
    from colossalai.booster.plugin import LowLevelZeroPlugin
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    plugin = LowLevelZeroPlugin(stage=stage, precision="fp32", overlap_communication=False)
    booster = Booster(plugin=plugin)
    model = _model()
    model, opt, *_ = booster.boost(model, torch.optim.AdamW(_groups(model, WD), lr=LR, eps=EPS))
    x, y = _batch()
    rank = dist.get_rank()
    half = slice(4 * rank, 4 * rank + 4)  # each rank half of the global batch: mean of means = global mean
    calls = [0]
    original = LowLevelZeroOptimizer._run_reduction

    def counting(self: Any) -> None:
        calls[0] += 1
        original(self)

    LowLevelZeroOptimizer._run_reduction = counting
    try:
        for _ in range(STEPS):
            booster.backward(model(pixel_values=x[half], labels=y[half]).loss, opt)
            opt.step()
            opt.zero_grad()
    finally:
        LowLevelZeroOptimizer._run_reduction = original
    # the bucket's final flush at the end of backward counts as one of the reductions
    return {n: p.detach().clone() for n, p in model.unwrap().named_parameters()}, calls[0] / STEPS


def _switches() -> int:
    """How often consecutive gradients change parameter group in backward (accumulation) order."""

    model = _model()
    group_of = {id(p): int(p.ndim <= 1) for p in model.parameters()}
    order: list[int] = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda q: order.append(group_of[id(q)]))
    x, y = _batch()
    model(pixel_values=x, labels=y).loss.backward()
    return sum(a != b for a, b in zip(order, order[1:]))


def _child() -> dict[str, Any]:
    import colossalai

    from vit_train.patches.cpu_compat import apply_cpu_compat
    from vit_train.patches.zero_buckets import apply_zero_bucket_fix

    colossalai.launch_from_torch(seed=0)
    apply_cpu_compat()
    ref, ref_no_decay = _reference(WD), _reference(0.0)
    res: dict[str, Any] = {"stock": {}, "fixed": {}, "group_switches_in_backward": _switches()}
    res["decay_effect"] = max((ref[n] - ref_no_decay[n]).abs().max().item() for n in ref)
    for label in ("stock", "fixed"):
        if label == "fixed":
            assert apply_zero_bucket_fix()
        for stage in (1, 2):
            params, per_backward = _zero(stage)
            res[label][str(stage)] = {
                "reductions_per_backward": per_backward,
                "max_param_diff": max((params[n] - ref[n]).abs().max().item() for n in ref),
            }
    return res


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
