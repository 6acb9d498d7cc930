"""model.cuda_graph: the rules that refuse or accept a run, and the captured step, run eagerly on CPU.

No GPU here, so the one fake is :class:`FakeSeam`, standing where :class:`vit_train.graph_step.CudaSeam`
stands. What it fakes is only what needs a GPU: the side stream of the warm-up (it runs inline), the
capture (it records the step function and runs nothing, as a capture runs nothing), the replay (it runs
the recorded function eagerly after setting the gradients to None, which is what a replay of a backward
captured with None gradients does: it assigns them) and the pinned asynchronous index copy (a plain
copy). In a fake replay the optimizer reads its Python-float rates; on a GPU the captured fused AdamW
reads the rate tensors filled from the same floats (the kernel casts a float rate to fp32 as well).
Everything else is the real code: :func:`vit_train.graph_step.step_body`, the Trainer, ColossalAI's
plugins and optimizers, real gloo process groups for tensor parallelism.

The equality tests are the point: the function the graph captures, run eagerly, trains exactly like
the Trainer's own eager step (torch_ddp fp32 on one rank, hybrid_parallel tp=2 bf16 on two, and two
data-parallel ranks of each plugin, where eager runs under DDP and the graphed run averages its gradients
itself), so a change to one that breaks the other fails here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from vit_train.config import ConfigError, RunConfig

GRAPH = {"model.cuda_graph": True}
BF16 = {"precision": "bf16"}
HYBRID = {"parallel.plugin": "hybrid_parallel", **BF16}


def _cfg(**over: Any) -> RunConfig:
    return RunConfig().with_overrides({"model.name": "tiny", **over})


# --------------------------------------------------------------------------- the rules (vit_train.graph_rules)
REFUSED = {
    "gemini": ({"parallel.plugin": "gemini", "optim.optimizer": "hybrid_adam", **BF16}, "parallel.plugin='gemini'"),
    "low_level_zero": ({"parallel.plugin": "low_level_zero", "parallel.zero_stage": 1, **BF16},
                       "parallel.plugin='low_level_zero'"),
    "hybrid_zero1": ({**HYBRID, "parallel.zero_stage": 1}, "parallel.zero_stage=1"),
    "pp2": ({**HYBRID, "parallel.pp_size": 2, "parallel.num_microbatches": 2}, "parallel.pp_size=2"),
    "fp16": ({"precision": "fp16"}, "precision='fp16'"),
    "hybrid_fp32": ({"parallel.plugin": "hybrid_parallel"}, "precision='fp32'"),
    "hybrid_adam": ({"optim.optimizer": "hybrid_adam"}, "optim.optimizer='hybrid_adam'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_combination_names_field_value_and_fix(name: str) -> None:
    over, field_value = REFUSED[name]
    _cfg(**over)  # valid without the graph
    with pytest.raises(ConfigError) as e:
        _cfg(**over, **GRAPH)
    msg = str(e.value)
    assert msg.startswith(field_value + ": cannot run with model.cuda_graph=true"), msg
    assert "model.cuda_graph supports parallel.plugin=torch_ddp" in msg and "set model.cuda_graph: false" in msg


@pytest.mark.parametrize("over, world", [({}, 1), ({**HYBRID, "parallel.tp_size": 2}, 4)])
def test_refused_without_a_gpu(over: dict, world: int) -> None:
    cfg = _cfg(**over, **GRAPH)
    with pytest.raises(ConfigError) as e:
        cfg.check_world(world, "cpu")
    assert str(e.value).startswith("model.cuda_graph=True: needs a CUDA GPU (this job runs on cpu)"), str(e.value)
    _cfg(**over).check_world(world, "cpu")  # fine without the graph


@pytest.mark.parametrize("over, world", [
    ({}, 1), (BF16, 1), (HYBRID, 1), ({**HYBRID, "parallel.tp_size": 2}, 2), ({**HYBRID, "parallel.tp_size": 4}, 4),
    ({"model.compile": True}, 1), ({**HYBRID, "model.compile": True}, 1),
    # several data-parallel ranks: the step all-reduces its gradients itself (vit_train.distributed.grad_sync)
    ({}, 2), (BF16, 8), (HYBRID, 2), ({**HYBRID, "parallel.tp_size": 2}, 8),
])
def test_accepted_and_not_part_of_the_signature(over: dict, world: int) -> None:
    from hpc.grid import run_signature

    graphed = _cfg(**over, **GRAPH)
    graphed.check_world(world, "cuda")
    assert run_signature(graphed) == run_signature(_cfg(**over))


# --------------------------------------------------------------------------- the bookkeeping (CapturedStep)
class FakeSeam:
    """See the module docstring: CudaSeam's calls, made eagerly on CPU; records what it was asked."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fn: Callable[[], None] | None = None
        self.reset: Callable[[], None] | None = None

    def stage_indices(self, dst: Any, idx: Any) -> None:
        self.events.append("stage")
        dst.copy_(idx)

    def run_eager(self, fn: Callable[[], None]) -> None:
        self.events.append("eager")
        fn()

    def capture(self, fn: Callable[[], None], reset_grads: Callable[[], None]) -> None:
        self.events.append("capture")
        self.fn, self.reset = fn, reset_grads

    def replay(self) -> None:
        self.events.append("replay")
        assert self.fn is not None and self.reset is not None
        self.reset()
        self.fn()


def test_captured_step_warms_up_captures_once_and_replays() -> None:
    import torch

    from vit_train.graph_step import CapturedStep

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    static_idx = torch.zeros(4, dtype=torch.int64)
    seen: list[tuple[list[int], float, Any]] = []
    resets: list[int] = []

    def body() -> None:
        group_lr = opt.param_groups[0]["lr"]
        seen.append((static_idx.tolist(), float(step.lr[0]), group_lr))
        model(x.index_select(0, static_idx)).square().mean().backward()
        opt.step()

    def reset() -> None:
        resets.append(len(seen))
        opt.zero_grad(set_to_none=True)

    with pytest.raises(ValueError, match="at least 1"):
        CapturedStep(body, reset, opt.param_groups, static_idx, FakeSeam(), warmup_steps=0)
    seam = FakeSeam()
    step = CapturedStep(body, reset, opt.param_groups, static_idx, seam, warmup_steps=2)
    for s in range(6):
        opt.param_groups[0]["lr"] = 0.1 / (s + 1)  # a scheduler between steps
        step(torch.arange(s, s + 4))
        assert isinstance(opt.param_groups[0]["lr"], float)  # floats outside the capture: checkpoints as eager
    assert seam.events == ["stage", "eager", "stage", "eager", "stage", "capture", "replay",
                           "stage", "replay", "stage", "replay", "stage", "replay"]
    assert [s[0] for s in seen] == [list(range(s, s + 4)) for s in range(6)]  # each step's own indices
    # From the capture on, the rate tensor the captured optimizer reads holds that step's rate.
    assert [lr_t for _, lr_t, _ in seen[2:]] == pytest.approx([0.1 / (s + 1) for s in range(2, 6)])
    # Gradients reset before every warm-up step and before the capture, none by the real graph later
    # (the fake's replays reset them too: see FakeSeam.replay).
    assert resets[:3] == [0, 1, 2]
    with pytest.raises(ValueError, match="built for"):
        step(torch.arange(3))
    with step.lr_from_tensors():
        assert opt.param_groups[0]["lr"] is step.lr[0]
    assert isinstance(opt.param_groups[0]["lr"], float)


def test_make_capturable_needs_fused_adamw_and_sets_capturable_after_a_resume() -> None:
    import torch

    from vit_train.graph_step import make_capturable

    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(RuntimeError, match="needs torch's fused AdamW"):
        make_capturable(torch.optim.AdamW(params))
    fused = torch.optim.AdamW(params, fused=True)  # fused AdamW exists on CPU too
    fused.param_groups[0]["capturable"] = False  # what loading an eager run's checkpoint leaves
    make_capturable(fused)
    assert fused.param_groups[0]["capturable"] is True


def test_resume_puts_fused_step_counters_on_the_parameters_device() -> None:
    """ColossalAI's optimizer loaders leave ``step`` on the CPU; the checkpoint loader moves it where
    torch's load_state_dict would (fused/capturable groups only). A meta-device parameter stands for
    a GPU one (no GPU here): only the device differs."""
    from types import SimpleNamespace

    import torch

    from vit_train.components.checkpoint import steps_on_param_device

    fused, plain = torch.nn.Parameter(torch.empty(2, device="meta")), torch.nn.Parameter(torch.empty(2, device="meta"))
    optim = SimpleNamespace(param_groups=[{"fused": True, "params": [fused]}, {"fused": None, "params": [plain]}],
                            state={fused: {"step": torch.tensor(7.0, dtype=torch.float64)},
                                   plain: {"step": torch.tensor(7.0)}})
    steps_on_param_device(optim)
    assert optim.state[fused]["step"].device.type == "meta" and optim.state[fused]["step"].dtype == torch.float32
    assert optim.state[plain]["step"].device.type == "cpu"  # HybridAdam / unfused: as loaded


def test_tp_dropout_of_rate_zero_becomes_identity_and_nonzero_is_refused() -> None:
    import torch

    from vit_train.patches.tp_dropout import identity, skip_rng_forks

    class ForkingDropout(torch.nn.Dropout):  # the shape of ColossalAI's DropoutFor*Input
        randomizer = None

    model = torch.nn.Sequential(ForkingDropout(0.0), torch.nn.Dropout(0.0), torch.nn.Linear(2, 2))
    assert skip_rng_forks(model) == 1 and model[0].forward is identity and "forward" not in model[1].__dict__
    with pytest.raises(RuntimeError, match="dropout with p=0.1"):
        skip_rng_forks(torch.nn.Sequential(ForkingDropout(0.1)))


# --------------------------------------------------------------------------- the step body against the Trainer
def test_step_body_equals_trainer_step_torch_ddp_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _run_child(tmp_path, monkeypatch, "ddp", nproc=1)
    _check_equal(r)
    assert r["events"] == ["stage", "eager"] * 3 + ["stage", "capture", "replay"] + ["stage", "replay"] * 2
    # evaluate() (4 batches, the last one padded) against one unpadded forward over the split, and its
    # host reads: a fixed number, none per batch.
    e = r["eval"]
    assert e["samples"] == 30 and abs(e["loss"] - e["ref_loss"]) < 1e-5 and e["accuracy"] == e["ref_accuracy"], e
    assert e["confusion"] == e["ref_confusion"] and e["wrong"] == e["ref_wrong"] and e["ref_wrong"], e
    assert e["reads"] == {"cpu": 1, "item": 3, "tolist": 5}, e


def test_step_body_equals_trainer_step_hybrid_tp2_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _run_child(tmp_path, monkeypatch, "tp2", nproc=2)
    _check_equal(r)
    assert r["tp_dropouts_bypassed"] > 0  # ColossalAI's TP dropouts (rate 0) skip their RNG-state swap


@pytest.mark.parametrize("case", ["ddp_dp2", "hybrid_dp2"])
def test_step_body_equals_trainer_step_with_two_data_parallel_ranks(case: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager run trains under ColossalAI's torch DDP (its reducer averages the gradients); the
    graphed one is boosted without DDP and averages them by vit_train.distributed.grad_sync inside
    the captured function: same losses, norms, weights and optimizer state, bit for bit."""
    r = _run_child(tmp_path, monkeypatch, case, nproc=2)
    _check_equal(r)
    assert r["eager_ddp"] is True and r["graph_ddp"] is False and r["graph_syncs"] is True, r
    assert r["rank_weights_equal"], r  # the two data-parallel ranks hold one model


def test_graphed_resume_ends_like_uninterrupted_and_reads_loss_only_at_log(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    r = _run_child(tmp_path, monkeypatch, "resume", nproc=1)
    assert r["statuses"] == ["completed", "preempted", "completed"]
    assert r["weight_mismatches"] == [] and r["n_params"] > 10
    assert r["batch_crc_equal"] and r["losses_equal"] and r["steps"] == [3, 4, 6, 8]  # every 3 steps and epoch ends
    # log() reads the interval sum once per record; nothing reads the static loss buffer.
    assert r["loss_sum_reads"] == r["records"] and r["records"] < 8 and r["static_loss_reads"] == 0
    assert r["lr_are_floats"] and r["scheduler_state_json"]


def _check_equal(r: dict[str, Any]) -> None:
    assert r["losses_a"] == r["losses_b"], r
    assert r["norms_a"] == r["norms_b"] and all(n > 0.05 for n in r["norms_a"]), r  # clipping engaged
    assert r["weight_mismatches"] == [] and r["state_mismatches"] == [] and r["n_params"] > 10, r
    assert r["interval_loss_a"] == r["interval_loss_b"], r
    assert abs(r["losses_a"][0] - r["losses_a"][-1]) > 1e-4, r  # it trained


def _run_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, nproc: int) -> dict[str, Any]:
    from tests.train_utils import run_torchrun_child

    monkeypatch.setenv("GRAPH_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("GRAPH_TEST_CASE", case)
    return run_torchrun_child(Path(__file__), nproc=nproc, timeout=240)


# --------------------------------------------------------------------------- child side
STEPS = 6


CASES: dict[str, dict[str, Any]] = {
    "ddp": {}, "resume": {}, "ddp_dp2": {},
    "tp2": {"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2, "precision": "bf16"},
    "hybrid_dp2": {"parallel.plugin": "hybrid_parallel", "precision": "bf16"},
}


def _config(out: Path, data: Path, case: str) -> RunConfig:
    over = CASES[case]
    return RunConfig.from_dict({
        "model": {"name": "tiny"}, "data": {"dataset": str(data), "num_workers": 0},
        "optim": {"batch_size": 8, "epochs": 2, "max_steps": 8, "lr": 1e-3, "warmup_ratio": 0.25, "weight_decay": 0.1,
                  "max_grad_norm": 0.05},
        "logging": {"tensorboard": False, "log_every_n_steps": 3}, "checkpoint": {"export_hf": False},
        "seed": 0, "output_dir": str(out),
    }).with_overrides(over)


def _trainer(cfg: RunConfig, env: Any, data: Any, graph: bool, stop: Callable[[], bool] = lambda: False) -> Any:
    from vit_train.trainer import Trainer

    class GraphTrainer(Trainer):
        """The Trainer as model.cuda_graph builds it (boost without DDP, GraphStep after the resume),
        over FakeSeam: the config keeps model.cuda_graph off, which the rules refuse on CPU."""

        def _graph_requested(self) -> bool:
            return True

        def _graph_seam(self) -> FakeSeam:
            self.seam = FakeSeam()
            return self.seam

    tr = (GraphTrainer if graph else Trainer)(cfg, env, stop_requested=stop)
    tr.setup(data=data)
    assert (tr.graph is not None) == graph
    return tr


def _params(tr: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in tr.model.unwrap().named_parameters()}


def _optim_state(tr: Any) -> list[Any]:
    inner = tr.optimizer.optim
    return [inner.state[p].get(k) for g in inner.param_groups for p in g["params"] for k in ("exp_avg", "exp_avg_sq")]


def _equality(root: Path, env: Any, data: Any, case: str) -> dict[str, Any]:
    import torch

    from vit_train.patches.tp_dropout import identity

    a = _trainer(_config(root / "a", data_dir(root), case), env, data, graph=False)
    b = _trainer(_config(root / "b", data_dir(root), case), env, data, graph=True)
    res: dict[str, Any] = {"losses_a": [], "losses_b": [], "norms_a": [], "norms_b": []}
    for s in range(STEPS):
        perm = a.order.epoch_permutation(s // a.order.steps_per_epoch)
        for tr, key in ((a, "a"), (b, "b")):
            loss, norm = tr.train_step(perm, s % tr.order.steps_per_epoch)
            norm = norm if norm is not None else tr.optimizer.get_grad_norm()
            res[f"losses_{key}"].append(float(loss))
            res[f"norms_{key}"].append(float(norm))
    pa, pb = _params(a), _params(b)
    sa, sb = _optim_state(a), _optim_state(b)
    res.update(
        n_params=len(pa),
        weight_mismatches=[n for n in pa if not torch.equal(pa[n], pb[n])],
        state_mismatches=[i for i, (x, y) in enumerate(zip(sa, sb)) if not torch.equal(x, y)],
        interval_loss_a=float(a._interval_loss), interval_loss_b=float(b.graph.buffers.loss_sum),
        events=b.seam.events,
        tp_dropouts_bypassed=sum(1 for m in b.model.unwrap().modules() if m.__dict__.get("forward") is identity),
    )
    assert b.graph.buffers.loss_sum is b._interval_loss
    if case.endswith("_dp2"):
        from torch.nn.parallel import DistributedDataParallel

        from tests.train_utils import same_on_all_ranks

        def ddp(tr: Any) -> bool:  # the torch DDP module under either plugin's wrapper
            return any(isinstance(m, DistributedDataParallel) for m in tr.model.modules())

        res.update(eager_ddp=ddp(a), graph_ddp=ddp(b), graph_syncs=b.graph.grad_sync is not None,
                   rank_weights_equal=same_on_all_ranks(pb.values()))
    if case == "ddp":
        res["eval"] = _evaluation(a)
    return _merge_ranks(res)


def _evaluation(tr: Any) -> dict[str, Any]:
    """vit_train.evaluation.evaluate against a direct computation, counting its host reads."""
    import torch
    import torch.nn.functional as F

    from vit_train import evaluation

    got: dict[str, Any] = {}
    figures = evaluation._figures
    evaluation._figures = lambda _tr, confusion, wrong: got.update(confusion=confusion, wrong=wrong) or {}
    reads = {"cpu": 0, "item": 0, "tolist": 0}
    originals = {n: getattr(torch.Tensor, n) for n in ("cpu", "item", "__float__", "tolist")}

    def counting(name: str, key: str) -> Any:
        def f(t: Any, *a: Any, **k: Any) -> Any:
            reads[key] += 1
            return originals[name](t, *a, **k)
        return f

    for name, key in (("cpu", "cpu"), ("item", "item"), ("__float__", "item"), ("tolist", "tolist")):
        setattr(torch.Tensor, name, counting(name, key))
    try:
        metrics, _ = evaluation.evaluate(tr)
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)
        evaluation._figures = figures
    with torch.no_grad():
        tr.model.eval()
        logits = tr.model(pixel_values=tr.eval_x).logits.float()
        tr.model.train()
    y = tr.eval_y
    pred = logits.argmax(-1)
    confusion = torch.zeros(len(tr.class_names), len(tr.class_names))
    confusion.index_put_((y, pred), torch.ones(len(y)), accumulate=True)
    wrong = (pred != y).nonzero().flatten()[: evaluation.MAX_SHOWN]
    return {**metrics, "reads": reads, "confusion": got["confusion"].tolist(), "wrong": [list(w) for w in got["wrong"]],
            "ref_loss": float(F.cross_entropy(logits, y)), "ref_accuracy": float((pred == y).double().mean()),
            "ref_confusion": confusion.tolist(), "ref_wrong": [[int(i), int(y[i]), int(pred[i])] for i in wrong]}


def _merge_ranks(res: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's result with every rank's mismatches (each TP rank holds its own shards)."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, res)
    for key in ("weight_mismatches", "state_mismatches"):
        res[key] = [f"rank{r}:{m}" for r, part in enumerate(parts) for m in part[key]]
    return res


class _ReadCounter:
    """Counts host reads (item, float, tolist) of chosen tensors."""

    def __init__(self) -> None:
        import torch

        self.watched: dict[int, str] = {}
        self.reads: dict[str, int] = {}
        for name in ("item", "__float__", "tolist"):
            orig = getattr(torch.Tensor, name)

            def counted(t: Any, *a: Any, _orig: Any = orig, **k: Any) -> Any:
                key = self.watched.get(id(t))
                if key is not None:
                    self.reads[key] = self.reads.get(key, 0) + 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, counted)

    def watch(self, t: Any, key: str) -> None:
        self.watched[id(t)] = key


def _resume(root: Path, env: Any, data: Any) -> dict[str, Any]:
    import torch

    counter = _ReadCounter()
    statuses, alive = [], []  # every trainer kept alive: no reuse of the ids the counter watches
    runs: dict[str, Any] = {}
    for key, stop_at in (("ref", None), ("cut", 4), ("cut", None)):
        holder: dict[str, Any] = {}
        tr = _trainer(_config(root / key, data_dir(root), "ddp"), env, data, graph=True,
                      stop=lambda h=holder, k=stop_at: k is not None and h["tr"].state.step >= k)
        holder["tr"] = tr
        alive.append(tr)
        counter.watch(tr._interval_loss, f"loss_sum_{key}")
        counter.watch(tr.graph.buffers.loss, "static_loss")
        statuses.append(tr.train().status)
        runs[key] = tr
    recs = {k: [json.loads(x) for x in (root / k / "metrics.jsonl").read_text().splitlines()] for k in runs}
    recs = {k: [r for r in v if r["kind"] == "train"] for k, v in recs.items()}
    pa, pb = _params(runs["ref"]), _params(runs["cut"])
    inner = runs["cut"].optimizer.optim
    return {
        "statuses": statuses,
        "n_params": len(pa),
        "weight_mismatches": [n for n in pa if not torch.equal(pa[n], pb[n])],
        "steps": [r["step"] for r in recs["cut"]],
        "batch_crc_equal": [r["batch_crc"] for r in recs["ref"]] == [r["batch_crc"] for r in recs["cut"]],
        "losses_equal": [r["loss"] for r in recs["ref"]] == [r["loss"] for r in recs["cut"]],
        "records": len(recs["ref"]),
        "loss_sum_reads": counter.reads.get("loss_sum_ref", 0),
        "static_loss_reads": counter.reads.get("static_loss", 0),
        "lr_are_floats": all(isinstance(g["lr"], float) for g in inner.param_groups),
        "scheduler_state_json": bool(json.dumps(runs["cut"].scheduler.state_dict())),
    }


def data_dir(root: Path) -> Path:
    rank = os.environ.get("RANK", "0")
    return root / f"data-rank{rank}"  # each rank writes its own (identical) copy: no race


def _child() -> dict[str, Any]:
    from vit_train.bench.data import open_prepared, write_synthetic_splits
    from vit_train.distributed.process_group import init_distributed

    root = Path(os.environ["GRAPH_TEST_DIR"])
    case = os.environ["GRAPH_TEST_CASE"]
    env = init_distributed(seed=0)
    data = open_prepared(write_synthetic_splits(data_dir(root), num_train=32, num_eval=30, image_size=32))
    return _resume(root, env, data) if case == "resume" else _equality(root, env, data, case)


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
