"""Interrupt and resume, in the same layout and across layouts, through the real CLI (fp32, CPU, gloo).

Interruptions use the project's fault-injection hook (VIT_TRAIN_FAULT, vit_train/faults.py) so the
step is exact: ``stop@step=K`` takes the same path as a USR2 preemption signal (collective save,
exit code 3); ``kill@step=K`` SIGKILLs the process with nothing saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.train_utils import base_args, child_env, run_cli

EPOCHS_2 = {"optim.epochs": 2, "optim.max_steps": 24, "checkpoint.export_hf": True}


def _records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final_model" / "model.safetensors"))


def _assert_same_run(a: Path, b: Path, tol: float, weight_tol: float | None = None) -> None:
    """Same steps, same data order, losses within tol; final weights within weight_tol (another
    layout sums gradients in another order, and Adam turns float-rounding noise into ~lr-sized
    relative updates, so weights across layouts get a looser bound than losses)."""
    ra, rb = _records(a), _records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 25))
    assert [r["batch_crc"] for r in ra] == [r["batch_crc"] for r in rb], "data order differs after resume"
    for x, y in zip(ra, rb):
        assert abs(x["loss"] - y["loss"]) <= tol, f"step {x['step']}: {x['loss']} vs {y['loss']}"
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys()
    # An attention key bias adds q.b to every score of a query alike, which softmax ignores: its true
    # gradient is zero, its computed one pure rounding noise that Adam scales up to lr-sized steps. It
    # carries no information about the run, so it is left out of the comparison.
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa if not k.endswith("attention.key.bias"))
    assert worst <= (weight_tol or tol), f"final weights differ by {worst}"
    res_a = json.loads((a / "result.json").read_text())
    res_b = json.loads((b / "result.json").read_text())
    assert abs(res_a["eval_accuracy"] - res_b["eval_accuracy"]) <= 1e-9
    assert abs(res_a["avg_train_loss"] - res_b["avg_train_loss"]) <= tol


def _uninterrupted(tmp_path: Path, dataset: Path, cache: Path, **over) -> Path:
    out = tmp_path / "uninterrupted"
    run_cli(base_args(dataset, cache, out, **EPOCHS_2, **over))
    return out


def test_stop_and_resume_same_layout(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    ref = _uninterrupted(tmp_path, synthetic_dataset, data_cache)
    out = tmp_path / "stopped"
    args = base_args(synthetic_dataset, data_cache, out, **EPOCHS_2)
    first = run_cli(args, env=child_env(VIT_TRAIN_FAULT="stop@step=7"), check=False)
    assert first.returncode == 3, first.stderr[-3000:]
    assert (out / "checkpoints" / "step-000007" / "COMPLETE.json").is_file()
    assert not (out / "result.json").exists()
    run_cli(args, env=child_env(VIT_TRAIN_FAULT="stop@step=7"))  # fault fires once per run folder
    _assert_same_run(ref, out, tol=1e-6)
    assert json.loads((out / "result.json").read_text())["restarts"] == 1


def test_hard_kill_resumes_from_last_periodic_checkpoint(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    ref = _uninterrupted(tmp_path, synthetic_dataset, data_cache)
    out = tmp_path / "killed"
    args = base_args(synthetic_dataset, data_cache, out, **EPOCHS_2, **{"checkpoint.every_n_steps": 4})
    first = run_cli(args, env=child_env(VIT_TRAIN_FAULT="kill@step=10"), check=False)
    assert first.returncode == -9
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-000004", "step-000008"], steps
    run_cli(args, env=child_env(VIT_TRAIN_FAULT="kill@step=10"))
    _assert_same_run(ref, out, tol=1e-6)


def test_resume_ddp_to_tp2_and_pp2_to_ddp(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    ref = _uninterrupted(tmp_path, synthetic_dataset, data_cache)
    tp2 = {"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2}
    pp2 = {"parallel.plugin": "hybrid_parallel", "parallel.pp_size": 2, "parallel.num_microbatches": 2}
    stop = child_env(VIT_TRAIN_FAULT="stop@step=6")

    a = tmp_path / "ddp_then_tp2"
    first = run_cli(base_args(synthetic_dataset, data_cache, a, **EPOCHS_2), env=stop, check=False)
    assert first.returncode == 3, first.stderr[-3000:]
    run_cli(base_args(synthetic_dataset, data_cache, a, **EPOCHS_2, **tp2), nproc=2)
    _assert_same_run(ref, a, tol=1e-5, weight_tol=1e-4)

    b = tmp_path / "pp2_then_ddp"
    first = run_cli(base_args(synthetic_dataset, data_cache, b, **EPOCHS_2, **pp2), nproc=2, env=stop, check=False)
    # torchrun turns a worker's exit code 3 into its own 1; what matters is the complete checkpoint.
    assert first.returncode != 0
    assert (b / "checkpoints" / "step-000006" / "COMPLETE.json").is_file(), first.stderr[-3000:]
    run_cli(base_args(synthetic_dataset, data_cache, b, **EPOCHS_2))
    _assert_same_run(ref, b, tol=1e-5, weight_tol=1e-4)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    out = tmp_path / "run"
    run_cli(base_args(synthetic_dataset, data_cache, out, **{"optim.max_steps": 2}))
    other = run_cli(base_args(synthetic_dataset, data_cache, out, **{"optim.max_steps": 4, "model.name": "vit_b16"}),
                    check=False)
    assert other.returncode != 0
    assert "was saved for model='tiny'" in other.stderr


def test_resume_tp2xpp2_to_ddp(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    """A checkpoint saved by 4 ranks under tp=2 x pp=2 continues in one DDP process with equal losses."""
    ref = _uninterrupted(tmp_path, synthetic_dataset, data_cache)
    hybrid = {"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2, "parallel.pp_size": 2,
              "parallel.num_microbatches": 2}
    out = tmp_path / "tp2pp2_then_ddp"
    first = run_cli(base_args(synthetic_dataset, data_cache, out, **EPOCHS_2, **hybrid), nproc=4,
                    env=child_env(VIT_TRAIN_FAULT="stop@step=9"), check=False)
    assert first.returncode != 0  # torchrun reports the workers' exit code 3 as its own 1
    assert (out / "checkpoints" / "step-000009" / "COMPLETE.json").is_file(), first.stderr[-3000:]
    run_cli(base_args(synthetic_dataset, data_cache, out, **EPOCHS_2))
    _assert_same_run(ref, out, tol=1e-5, weight_tol=1e-4)


def test_preemption_signal_during_evaluation(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    """A real SIGUSR2 arrives in the middle of the evaluation after step 12: the evaluation finishes,
    the run checkpoints at step 12 and exits 3; the resumed run neither repeats nor loses that
    evaluation and ends equal to an uninterrupted run."""
    ref = _uninterrupted(tmp_path, synthetic_dataset, data_cache)
    out = tmp_path / "usr2_in_eval"
    args = base_args(synthetic_dataset, data_cache, out, **EPOCHS_2)
    first = run_cli(args, env=child_env(VIT_TRAIN_FAULT="usr2@eval=12"), check=False)
    assert first.returncode == 3, first.stderr[-3000:]
    assert (out / "checkpoints" / "step-000012" / "COMPLETE.json").is_file()
    run_cli(args, env=child_env(VIT_TRAIN_FAULT="usr2@eval=12"))
    _assert_same_run(ref, out, tol=1e-6)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [12, 24]
