"""Several runs per array task (``slurm.runs_per_gpu``) on the local real Slurm (tests marked ``slurm``).

The "real" tests run the real PackedJob, child processes and trainer (tiny ViT, CPU, gloo, one process
per run) through ``submit``: packed runs train exactly what the same runs train alone, and a USR2 to a
packed task checkpoints every run, requeues the task and each run ends equal to an uninterrupted
run. The "stub" tests replace only the trainer (StubTrainJob.train: sleeps per step, honours stop(),
checkpoints a step counter; lr 0.5 raises) to check in seconds that a packed run killed or crashing
alone fails alone, with its own reason, and that ``resume`` reruns only it. The over-large K test
runs the real preflight (sinfo, sbatch --test-only) and queues nothing. The dev cluster is started
once per session by tests/conftest.py; every wait has a timeout. Nothing else is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import yaml

import hpc.job
from hpc import procstate, runstate, slurm_query, submission
from hpc.cli import main as cli_main
from hpc.job import TrainJob
from tests.slurm_utils import all_phase, grid_statuses, run_differs, wait_for_grid
from tests.train_utils import REPO, child_env

WAIT_S = 300.0
STEPS, HOLD_AT = 8, 4  # 96 synthetic images / batch 8 = 12 steps per epoch


# ---------------------------------------------------------------------------- helpers
def _write_grid(root: Path, name: str, base: dict[str, Any], lrs: list[float], **slurm: Any) -> Path:
    (root / "grids").mkdir(exist_ok=True)
    doc = {"name": name, "output_root": "../runs", "profile": "local",
           "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 2, "mem_gb": 2,
                     "time_min": 10, "signal_delay_s": 60, "max_requeues": 20, **slurm},
           "base": base, "grid": {"optim.lr": lrs}}
    path = root / "grids" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _real_base(dataset: Path, cache: Path) -> dict[str, Any]:
    return {"model": {"name": "tiny"}, "seed": 42,
            "data": {"dataset": str(dataset), "cache_dir": str(cache), "num_workers": 0},
            "optim": {"epochs": 1, "max_steps": STEPS, "batch_size": 8, "max_grad_norm": 0.0},
            "parallel": {"plugin": "torch_ddp"}, "precision": "fp32",
            "logging": {"log_every_n_steps": 1, "eval_every_n_epochs": 1, "tensorboard": True},
            "checkpoint": {"export_hf": True}}


def _sacct_final(job_id: str, timeout: float = 60) -> slurm_query.SlurmJobState:
    deadline = time.monotonic() + timeout
    while True:
        st = slurm_query.sacct_states([job_id]).get(job_id)
        if st is not None and st.state not in runstate.RUNNING_STATES | runstate.PENDING_STATES:
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} has no end state in sacct after {timeout:.0f} s: {st}")
        time.sleep(0.5)


_REFERENCES: dict[str, Path] = {}  # signature -> uninterrupted run folder, shared by the tests of this session


def _references(run_dirs: list[Path], tmp: Path, parallel: int = 2) -> dict[Path, Path]:
    """The same resolved configs, each trained alone and uninterrupted by ``python -m vit_train``."""
    todo = []
    for d in run_dirs:
        rec = runstate.read_run_record(d)
        assert rec is not None
        if rec.signature not in _REFERENCES:
            out = tmp / f"ref-{d.name}"
            (tmp / f"{d.name}.yaml").write_text(yaml.safe_dump({**rec.config, "output_dir": str(out)}))
            todo.append((rec.signature, out, [sys.executable, "-m", "vit_train", "--config", str(tmp / f"{d.name}.yaml")]))
    while todo:
        wave, todo = todo[:parallel], todo[parallel:]
        procs = [(sig, out, subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True)) for sig, out, cmd in wave]
        for sig, out, p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            _REFERENCES[sig] = out
    return {d: _REFERENCES[runstate.read_run_record(d).signature] for d in run_dirs}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- real training
@pytest.mark.slurm
@pytest.mark.slow
def test_packed_runs_train_what_they_train_alone(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                 data_cache: Path) -> None:
    """5 runs, runs_per_gpu 3: one array of ceil(5/3) = 2 tasks (3 + 2 runs, one process each); every run
    has its own folder, log, checkpoint and TensorBoard files and equals the same run trained alone."""
    lrs = [1e-3, 2e-3, 3e-3, 5e-3, 1e-2]
    grid = _write_grid(tmp_path, "packed", _real_base(synthetic_dataset, data_cache), lrs, runs_per_gpu=3)
    ids = submission.submit(grid, out=lambda _: None).job_ids
    tasks = sorted(set(ids.values()))
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, ids  # one array, two tasks
    sts = wait_for_grid(grid, all_phase("finished"), "packed runs finished", WAIT_S)
    for task in tasks:
        end = _sacct_final(task)
        assert (end.state, end.exit_code) == ("COMPLETED", "0:0"), end
    by_task: dict[str, list[str]] = {}
    for s in sts:
        run_dir = Path(s.run_dir)
        rec = runstate.read_run_record(run_dir)
        assert rec is not None and rec.last_job_id == s.job_id
        by_task.setdefault(s.job_id or "", []).append(s.name)
        assert set(rec.submissions[-1].packed_with) == {n for n, t in ids.items() if t == s.job_id} - {s.name}
        assert [a["job_id"] for a in runstate.read_attempts(run_dir)] == [s.job_id]
        assert procstate.read_record(run_dir).exit_code == 0  # type: ignore[union-attr]
        assert (run_dir / "logs" / f"{s.job_id}.err").stat().st_size > 0
        assert list((run_dir / "tb").glob("events.out.tfevents.*")) and list((run_dir / "checkpoints").glob("step-*"))
    assert sorted(len(v) for v in by_task.values()) == [2, 3]
    refs = _references([Path(s.run_dir) for s in sts], tmp_path)
    diffs = {d.name: run_differs(ref, d) for d, ref in refs.items()}
    assert all(v is None for v in diffs.values()), diffs


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_to_a_packed_task_checkpoints_every_run(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                     data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 runs in one task; ``hold@step=4`` (vit_train/faults.py) keeps each run after step 4 until the signal
    arrives, so the USR2 catches all three mid-run. Each stops at a step boundary with a complete
    checkpoint, the task requeues itself once (same job id), every run resumes from its checkpoint and
    ends equal to the same run trained alone without interruption."""
    lrs = [1e-3, 2e-3, 5e-3]
    grid = _write_grid(tmp_path, "packpre", _real_base(synthetic_dataset, data_cache), lrs, runs_per_gpu=3)
    monkeypatch.setenv("VIT_TRAIN_FAULT", f"hold@step={HOLD_AT}")  # sbatch exports the submitting environment
    ids = submission.submit(grid, out=lambda _: None).job_ids
    monkeypatch.delenv("VIT_TRAIN_FAULT")
    (job,) = set(ids.values())
    wait_for_grid(grid, lambda sts: all((s.step or 0) >= HOLD_AT - 1 for s in sts), "every run near the hold", WAIT_S)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    sts = wait_for_grid(grid, all_phase("finished"), "finished after the requeue", timeout=2 * WAIT_S)
    end = _sacct_final(job)
    assert (end.state, end.exit_code) == ("COMPLETED", "0:0"), end
    for s in sts:
        run_dir = Path(s.run_dir)
        assert [(a["job_id"], a["restart_count"]) for a in runstate.read_attempts(run_dir)] == [(job, 0), (job, 1)]
        assert s.restarts == 1 and json.loads((run_dir / "result.json").read_text())["restarts"] == 1
        assert [p.name for p in run_dir.glob(".fault-hold-*")] == [f".fault-hold-step-{HOLD_AT}-None-rank0"]
        log = (run_dir / "logs" / f"{job}.err").read_text()
        assert f"resumed from {run_dir}/checkpoints/step-{HOLD_AT:06d}" in log, log[-2000:]
    refs = _references([Path(s.run_dir) for s in sts], tmp_path)
    diffs = {d.name: run_differs(ref, d) for d, ref in refs.items()}
    assert all(v is None for v in diffs.values()), diffs


# ---------------------------------------------------------------------------- stub trainer
def _put(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class StubTrainJob(TrainJob):
    """TrainJob with a stand-in trainer: optim.max_steps steps of 0.5 s; lr 0.5 raises."""

    def train(self, cfg: Any, stop: Any) -> int:
        run_dir = Path(cfg.output_dir)
        ckpt = run_dir / "stub_ckpt.json"
        step = start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
        total = cfg.optim.max_steps or 4
        if cfg.optim.lr == 0.5:
            raise ValueError("stub trainer: loss is nan at lr 0.5")
        while step < total:
            time.sleep(0.5)
            step += 1
            _put(run_dir / "progress.json", {"state": "running", "step": step, "total_steps": total})
            if stop():
                _put(ckpt, {"step": step})
                _put(run_dir / "progress.json", {"state": "preempted", "step": step, "total_steps": total})
                return 3
        _put(run_dir / "result.json", {"status": "completed", "steps": step, "resumed_from": start,
                                       "eval_accuracy": 0.5, "avg_train_loss": 0.25, "eval_loss": 0.3})
        _put(run_dir / "progress.json", {"state": "completed", "step": step, "total_steps": total})
        return 0


# The job processes cannot import this test module: pickle its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def stub_jobs(slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> type[TrainJob]:
    monkeypatch.setattr(hpc.job, "TrainJob", StubTrainJob)
    return StubTrainJob


def _stub_grid(root: Path, name: str, lrs: list[float], steps: int, **slurm: Any) -> Path:
    (root / "data").mkdir(exist_ok=True)
    return _write_grid(root, name, {"model": {"name": "tiny"}, "data": {"dataset": "../data"},
                                    "optim": {"max_steps": steps}}, lrs, **slurm)


@pytest.mark.slurm
def test_a_packed_run_killed_alone_fails_alone_and_resume_reruns_only_it(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "packkill", [1e-3, 2e-3, 5e-3], steps=30, runs_per_gpu=3)
    ids = submission.submit(grid, out=lambda _: None).job_ids
    (job,) = set(ids.values())
    wait_for_grid(grid, lambda sts: all((s.step or 0) >= 2 for s in sts), "every run at step 2", WAIT_S)
    victim = next(s for s in grid_statuses(grid) if s.lr == 2e-3)
    rec = procstate.read_record(Path(victim.run_dir))
    assert rec is not None and rec.job_id == job and rec.pid is not None
    os.kill(rec.pid, signal.SIGKILL)  # the run's own process, on this host (the dev cluster's nodes)
    sts = wait_for_grid(grid, lambda sts: {s.lr: s.phase for s in sts} == {1e-3: "finished", 2e-3: "failed",
                                                                       5e-3: "finished"}, "victim failed alone", WAIT_S)
    failed = next(s for s in sts if s.lr == 2e-3)
    assert "killed by SIGKILL" in failed.failure and failed.job_id == job, failed
    assert _sacct_final(job).state == "FAILED"  # the task reports the failure once its neighbours are done
    lines: list[str] = []
    again = submission.resume(grid, out=lines.append)
    assert list(again.job_ids) == [failed.name], lines
    assert sum(line.startswith("skip (finished)") for line in lines) == 2
    sts = wait_for_grid(grid, all_phase("finished"), "finished after resume", WAIT_S)
    rec2 = runstate.read_run_record(Path(failed.run_dir))
    assert rec2 is not None and [x.reason for x in rec2.submissions] == ["submit", "resume"]
    assert json.loads((Path(failed.run_dir) / "result.json").read_text())["resumed_from"] == 0  # SIGKILL: no checkpoint


@pytest.mark.slurm
def test_a_crashing_packed_run_shows_its_own_exception(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "packcrash", [1e-3, 0.5], steps=4, runs_per_gpu=2)
    submission.submit(grid, out=lambda _: None)
    sts = wait_for_grid(grid, lambda sts: all(s.phase in runstate.SETTLED for s in sts), "settled", WAIT_S)
    by_lr = {s.lr: s for s in sts}
    assert by_lr[1e-3].phase == "finished" and by_lr[0.5].phase == "failed"
    assert by_lr[0.5].failure_kind == "python_exception" and "loss is nan at lr 0.5" in by_lr[0.5].failure


@pytest.mark.slurm
def test_an_over_large_runs_per_gpu_is_refused_before_queueing(slurm_cluster: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Nine ViT-B/16 runs at batch up to 32 (bf16, Gemini) do not fit the 16 GB the local profile gives its GPUs."""
    (tmp_path / "data").mkdir()
    base = {"model": {"name": "vit_b16"}, "data": {"dataset": "../data"}, "optim": {"optimizer": "hybrid_adam"},
            "parallel": {"plugin": "gemini"}, "precision": "bf16"}
    path = _write_grid(tmp_path, "toomany", base, [1e-4, 2e-4, 5e-4], gpus_per_node=1, tasks_per_node=None,
                       runs_per_gpu=9)
    doc = yaml.safe_load(path.read_text())
    doc["grid"] = {"optim.batch_size": [8, 16, 32], "optim.lr": [1e-4, 2e-4, 5e-4]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli_main(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "slurm.runs_per_gpu: 9 runs of up to" in err and "use runs_per_gpu: 3 or less" in err, err
    assert "nothing was submitted" in err and not (tmp_path / "runs").exists()
    assert "toomany" not in subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout
    doc["slurm"]["runs_per_gpu"] = 3  # the largest K named fits, and passes the whole preflight (sbatch too)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    from hpc.preflight import check_file

    assert len(check_file(path, out=lambda _: None)[2]) == 9
