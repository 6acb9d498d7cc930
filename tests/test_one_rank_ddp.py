"""vit_train.patches.one_rank_ddp: HybridParallelPlugin and TorchDDPPlugin leave out torch DDP over a one-rank
group, and train bit-identically to ColossalAI as shipped.

Real ColossalAI plugins and a tiny real transformers ViT, under ``torchrun`` (gloo, CPU).
HybridParallel with 2 ranks: tp=2 (data-parallel group of one rank: no DDP with the fix, DDP as
shipped) and tp=1/dp=2 (DDP kept); with 1 rank: tp=1 (no DDP with the fix). TorchDDP: 1 rank (no DDP
with the fix) and 2 ranks (DDP kept). Each trains 3 steps (hybrid: bf16; TorchDDP: fp32 weights under
bf16 autocast, as vit_train runs it) with weight decay and clipping, first as shipped and then with
the fix, from the same weights on the same batches: every working weight must be equal bit for bit
and the weights must have moved. The TorchDDP model's state-dict keys must be the ones DDP gives
(checkpoints are interchangeable), and a checkpoint saved through the Booster must load back. Inside
``without_ddp`` (how a graphed run boosts) both plugins leave DDP out on two data-parallel ranks too and
broadcast rank 0's weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STEPS = 3


def test_no_ddp_for_one_rank_groups_same_training(tmp_path: Path, monkeypatch: Any) -> None:
    from tests.train_utils import run_torchrun_child

    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path))

    two = run_torchrun_child(Path(__file__), nproc=2, timeout=300)
    one = run_torchrun_child(Path(__file__), nproc=1, timeout=300)
    assert two["applied"] and one["applied"]
    cases = ((two, "tp2", False), (two, "tp1", True), (one, "tp1", False), (two, "torch_ddp", True),
             (one, "torch_ddp", False))
    for r, layout, ddp_kept in cases:
        res = r[layout]
        assert res["stock_ddp"] is True, (layout, res)  # what ColossalAI does as shipped
        assert res["fixed_ddp"] is ddp_kept, (layout, res)
        assert res["mismatches"] == [] and res["n_params"] > 10, (layout, res)
        assert res["moved"] > 1e-3, (layout, res)
    for r in (one, two):
        assert r["torch_ddp"]["same_state_dict_keys"], r["torch_ddp"]
        assert r["torch_ddp"]["checkpoint_round_trip"], r["torch_ddp"]
    # Inside without_ddp (model.cuda_graph's boost) two data-parallel ranks get no DDP either, and
    # rank 1's different starting weights become rank 0's, as DDP's constructor would make them.
    for plugin in ("torch_ddp", "hybrid_tp1"):
        assert two["without_ddp"][plugin] == {"ddp": False, "differed_before": True, "equal_after": True}, two


def _without_ddp_case(name: str) -> dict[str, bool]:
    import torch
    import torch.distributed as dist
    from colossalai.booster import Booster
    from colossalai.booster.plugin import HybridParallelPlugin, TorchDDPPlugin
    from torch.nn.parallel import DistributedDataParallel

    from tests.train_utils import same_on_all_ranks, tiny_vit
    from vit_train.patches.one_rank_ddp import without_ddp

    plugin = (TorchDDPPlugin() if name == "torch_ddp" else
              HybridParallelPlugin(tp_size=1, pp_size=1, precision="bf16", zero_stage=0))
    model = tiny_vit(num_labels=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(dist.get_rank())  # the ranks start apart

    before = same_on_all_ranks(model.parameters())
    with without_ddp():
        boosted, *_ = Booster(plugin=plugin).boost(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    return {"ddp": any(isinstance(m, DistributedDataParallel) for m in boosted.modules()),
            "differed_before": not before, "equal_after": same_on_all_ranks(boosted.unwrap().parameters())}


# --------------------------------------------------------------------------- child side


def _train(tp: int) -> tuple[bool, dict[str, Any], float]:
    import torch
    from colossalai.booster import Booster
    from colossalai.booster.plugin import HybridParallelPlugin
    from torch.nn.parallel import DistributedDataParallel

    from tests.train_utils import tiny_vit

    plugin = HybridParallelPlugin(tp_size=tp, pp_size=1, precision="bf16", zero_stage=0, max_norm=0.05)
    booster = Booster(plugin=plugin)
    model = tiny_vit(num_labels=4)
    init = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.5},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    model, opt, *_ = booster.boost(model, torch.optim.AdamW(groups, lr=1e-2))
    uses_ddp = isinstance(model.module, DistributedDataParallel)
    g = torch.Generator().manual_seed(1 + torch.distributed.get_rank(plugin.dp_group))
    for _ in range(STEPS):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
        booster.backward(model(pixel_values=x.bfloat16(), labels=y).loss, opt)
        opt.step()
        opt.zero_grad()
    working = {n: p.detach().clone() for n, p in model.unwrap().named_parameters()}
    moved = max((working[n].float() - init[n][tuple(slice(0, s) for s in working[n].shape)]).abs().max().item()
                for n in working)
    return uses_ddp, working, moved


def _train_torch_ddp(ckpt: Path | None) -> tuple[bool, dict[str, Any], float, list[str], bool]:
    import torch
    import torch.nn.functional as F
    from colossalai.booster import Booster
    from colossalai.booster.plugin import TorchDDPPlugin
    from torch.nn.parallel import DistributedDataParallel

    from tests.train_utils import tiny_vit

    booster = Booster(plugin=TorchDDPPlugin(broadcast_buffers=False))
    model = tiny_vit(num_labels=4)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.5},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    model, opt, *_ = booster.boost(model, torch.optim.AdamW(groups, lr=1e-2))
    uses_ddp = isinstance(model.module, DistributedDataParallel)
    g = torch.Generator().manual_seed(1 + torch.distributed.get_rank())
    for _ in range(STEPS):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pixel_values=x).logits
        booster.backward(F.cross_entropy(logits.float(), y), opt)
        opt.clip_grad_by_norm(0.05)
        opt.step()
        opt.zero_grad()
    working = {n: p.detach().clone() for n, p in model.unwrap().named_parameters()}
    moved = max((working[n] - init[n]).abs().max().item() for n in working)
    round_trip = True
    if ckpt is not None:  # save through the Booster, perturb, load back: the saved weights return
        booster.save_model(model, str(ckpt))  # (rank 0 writes)
        torch.distributed.barrier()
        with torch.no_grad():
            for p in model.unwrap().parameters():
                p.add_(1.0)
        booster.load_model(model, str(ckpt))
        round_trip = all(torch.equal(working[n], p) for n, p in model.unwrap().named_parameters())
    return uses_ddp, working, moved, sorted(model.state_dict()), round_trip


def _child() -> dict[str, Any]:
    import colossalai
    import torch

    from vit_train.patches.cpu_compat import apply_cpu_compat
    from vit_train.patches.one_rank_ddp import apply_hybrid_ddp_fix, apply_torch_ddp_fix

    colossalai.launch_from_torch(seed=0)
    apply_cpu_compat()
    world = torch.distributed.get_world_size()
    layouts = (1, 2) if world == 2 else (1,)
    stock = {tp: _train(tp) for tp in layouts}
    s_ddp, s_working, _, s_keys, _ = _train_torch_ddp(None)
    res: dict[str, Any] = {"applied": apply_hybrid_ddp_fix() and apply_torch_ddp_fix()}
    ckpt = Path(os.environ["TEST_CKPT_DIR"]) / f"ddp-{world}.pt"
    ddp, working, moved, keys, round_trip = _train_torch_ddp(ckpt)
    res["torch_ddp"] = {"stock_ddp": s_ddp, "fixed_ddp": ddp, "n_params": len(working), "moved": moved,
                        "mismatches": [n for n in s_working if not torch.equal(s_working[n], working[n])],
                        "same_state_dict_keys": keys == s_keys and len(keys) > 10,
                        "checkpoint_round_trip": round_trip}
    for tp in layouts:
        ddp, working, moved = _train(tp)
        s_ddp, s_working, _ = stock[tp]
        res[f"tp{tp}"] = {"stock_ddp": s_ddp, "fixed_ddp": ddp, "n_params": len(working), "moved": moved,
                          "mismatches": [n for n in s_working if not torch.equal(s_working[n], working[n])]}
    if world == 2:
        res["without_ddp"] = {name: _without_ddp_case(name) for name in ("torch_ddp", "hybrid_tp1")}
    return res


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
