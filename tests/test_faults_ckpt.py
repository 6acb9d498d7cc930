"""Hard kills inside a checkpoint write, and a truncated checkpoint, through the real CLI (2-process
torchrun, gloo, CPU, fp32): nothing is lost and nothing partial is ever resumed from.

Every scenario starts from the same folder: a run stopped at step 4 with a complete ``step-000004``
(made once, then copied). The next attempt SIGKILLs one rank at one point of the step-8 save
(``VIT_TRAIN_FAULT=kill@ckpt=POINT/rank=R``, vit_train/faults.py); torchrun then takes the other rank
down. After the kill every ``step-*`` folder must verify against its manifest (a half-written save may
only exist as ``.tmp-step-*``), and the newest complete checkpoint must be step 4. The resumed attempt
(same environment: a rule fires once per run folder) must end with per-step losses, data order, final
weights and eval metrics equal to an uninterrupted run: DDP on CPU with gloo is bitwise deterministic,
so the tolerance is 1e-6. Nothing is faked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import reliability_report
from tests.train_utils import base_args, child_env, run_cli
from vit_train.components import checkpoint
from vit_train.components.faults import CKPT_POINTS

SEED = 42  # RunConfig.seed: model head init and data order
NPROC = 2
STEPS = 12
OPTS = {"optim.max_steps": STEPS, "checkpoint.every_n_steps": 4, "checkpoint.export_hf": True, "seed": SEED}
TOL = 1e-6
# Ranks other than 0 write only the model and optimizer shards and their RNG file; the later points
# (trainer_state, manifest, rename) are rank 0's alone.
RANK1_POINTS = ("after_model", "after_optimizer")
SCENARIOS = [(p, 0) for p in CKPT_POINTS] + [(p, 1) for p in RANK1_POINTS]


def _args(dataset: Path, cache: Path, out: Path) -> list[str]:
    return base_args(dataset, cache, out, **OPTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path, data_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC)
    return out


@pytest.fixture(scope="module")
def stopped_at_4(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path, data_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("faults") / "stopped_at_4"
    first = run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC, env=child_env(VIT_TRAIN_FAULT="stop@step=4"),
                    check=False)
    assert first.returncode != 0  # torchrun reports the workers' exit code 3 as its own 1
    assert [p.name for _, p in checkpoint.list_checkpoints(out / "checkpoints")] == ["step-000004"], first.stderr[-3000:]
    return out


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def assert_same_as(ref: Path, run: Path, tol: float = TOL) -> None:
    ra, rb = _train_records(ref), _train_records(run)
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == list(range(1, STEPS + 1))
    assert [r["batch_crc"] for r in rb] == [r["batch_crc"] for r in ra], "data order differs after resume"
    for x, y in zip(ra, rb):
        assert abs(x["loss"] - y["loss"]) <= tol, f"step {x['step']}: loss {y['loss']} vs uninterrupted {x['loss']}"
    wa = load_file(str(ref / "final_model" / "model.safetensors"))
    wb = load_file(str(run / "final_model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= tol, f"final weights differ by {worst}"
    res_a, res_b = (json.loads((d / "result.json").read_text()) for d in (ref, run))
    assert res_b["status"] == "completed" and res_b["steps"] == STEPS
    for key in ("eval_accuracy", "eval_loss", "avg_train_loss"):
        assert abs(res_a[key] - res_b[key]) <= tol, f"{key}: {res_b[key]} vs {res_a[key]}"


def assert_nothing_partial(ckpt_root: Path) -> None:
    """Every step-* folder verifies against its manifest; a partial save exists only as .tmp-step-*."""
    for _, folder in checkpoint.list_checkpoints(ckpt_root):
        problem = checkpoint.verify(folder)
        assert problem is None, f"{folder} is named complete but {problem}"


@pytest.mark.parametrize("point, rank", SCENARIOS, ids=[f"{p}-rank{r}" for p, r in SCENARIOS])
def test_kill_during_checkpoint_write_then_resume(point: str, rank: int, reference: Path, stopped_at_4: Path,
                                                 tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    print(f"fault kill@ckpt={point}/rank={rank} at the step-8 save; seed={SEED}, {NPROC} ranks, {STEPS} steps")
    out = tmp_path / "run"
    shutil.copytree(stopped_at_4, out)
    env = child_env(VIT_TRAIN_FAULT=f"kill@ckpt={point}/rank={rank}")
    survived = False
    try:
        killed = run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC, env=env, check=False)
        assert killed.returncode != 0, "the fault did not fire"
        assert (out / f".fault-kill-ckpt-{point}-{rank}-rank{rank}").exists(), killed.stderr[-3000:]
        assert not (out / "result.json").exists()
        assert_nothing_partial(out / "checkpoints")
        assert (out / "checkpoints" / ".tmp-step-000008").is_dir()  # the interrupted save, never renamed
        newest = checkpoint.newest_complete(out / "checkpoints")
        assert newest is not None and newest.name == "step-000004"

        resumed = run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC, env=env)
        assert "step-000004 at step 4" in resumed.stderr, resumed.stderr[-3000:]
        assert_nothing_partial(out / "checkpoints")
        assert not list((out / "checkpoints").glob(".tmp-step-*"))
        assert json.loads((out / "result.json").read_text())["restarts"] == 1
        assert_same_as(reference, out)
        survived = True
    finally:
        reliability_report.record("injection", suite="ckpt-kill", case=f"kill@ckpt={point}/rank={rank}", seed=SEED,
                                  detail=f"SIGKILL rank {rank} at {point} of the step-8 save; 2-rank DDP",
                                  survived=survived)


def test_truncated_newest_checkpoint_is_skipped(reference: Path, stopped_at_4: Path, tmp_path: Path,
                                                synthetic_dataset: Path, data_cache: Path) -> None:
    """A complete step-8 whose model shard is then cut in half: reported on stderr, step 4 used instead."""
    print(f"truncated model shard of step-000008; seed={SEED}")
    out = tmp_path / "run"
    shutil.copytree(stopped_at_4, out)
    survived = False
    try:
        first = run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC, env=child_env(VIT_TRAIN_FAULT="stop@step=8"),
                        check=False)
        step8 = out / "checkpoints" / "step-000008"
        assert checkpoint.verify(step8) is None, first.stderr[-3000:]
        shard = min((step8 / "model").glob("*.safetensors"))
        size = shard.stat().st_size
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
        assert "truncated" in (checkpoint.verify(step8) or "")

        resumed = run_cli(_args(synthetic_dataset, data_cache, out), nproc=NPROC,
                          env=child_env(VIT_TRAIN_FAULT="stop@step=8"))
        assert f"skipping checkpoint {step8}: model/{shard.name} has {size // 2} bytes" in resumed.stderr, \
            resumed.stderr[-3000:]
        assert "step-000004 at step 4" in resumed.stderr
        assert_nothing_partial(out / "checkpoints")
        assert_same_as(reference, out)
        survived = True
    finally:
        reliability_report.record("injection", suite="ckpt-kill", case="truncated-model-shard", seed=SEED,
                                  detail="newest checkpoint's model shard truncated to half", survived=survived)


def test_weights_equal_helper_detects_a_difference(reference: Path, tmp_path: Path) -> None:
    """The comparison above is not vacuous: one changed weight fails it."""
    other = tmp_path / "other"
    shutil.copytree(reference, other, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    path = other / "final_model" / "model.safetensors"
    w = load_file(str(path))
    name = min(w)
    w[name] = w[name] + 1e-4
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in w.items()}, str(path), metadata={"format": "pt"})
    with pytest.raises(AssertionError, match="final weights differ"):
        assert_same_as(reference, other)
    assert torch.equal(load_file(str(reference / "final_model" / "model.safetensors"))[name] + 1e-4, w[name])
