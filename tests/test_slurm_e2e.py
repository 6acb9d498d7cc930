"""Jobs on the local real Slurm: submit, run, preempt, time out, cancel, resume, force (tests marked ``slurm``).

Two kinds of tests. The "stub" tests run real submitit job arrays and real Slurm signals, with only the
trainer replaced by StubTrainJob.train (sleeps per step, honours stop(), checkpoints a step counter,
writes progress.json/result.json like vit_train): they test job.py's signal swap, requeue, resume and
exit path in seconds. The "e2e" tests (also marked ``slow``) run the real TrainJob and trainer (tiny ViT,
CPU, gloo) on the synthetic dataset: the 3x3 grid, a 2-node run under real preemption, the time limit,
cancel and resume, and the plain sbatch template. The dev cluster is started once per session by
tests/conftest.py; every job gets its own grid folder under tmp_path; every wait has a timeout.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import yaml

import hpc.job
from hpc import runstate, site_profile, slurm_query, submission
from hpc.cli import main as cli_main
from hpc.job import TrainJob
from hpc.slurm_query import SlurmJobState
from tests.slurm_utils import all_phase, grid_statuses, wait_for_grid
from tests.train_utils import child_env, free_port

REPO = Path(__file__).resolve().parents[1]
BASE_GRID: dict[str, Any] = {
    "name": "stub",
    "output_root": "../runs",
    "profile": "local",
    "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
              "time_min": 10, "signal_delay_s": 60},
    "base": {"model": {"name": "tiny"}, "data": {"dataset": "../data/beans"}},
}


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cpu_tiny_copy(root: Path) -> Path:
    """grids/cpu_tiny.yaml copied under root, so its ../runs and ../demo_runs land in root."""
    (root / "grids").mkdir()
    (root / "demo_runs" / "data").mkdir(parents=True)
    grid = root / "grids" / "cpu_tiny.yaml"
    grid.write_text((REPO / "grids" / "cpu_tiny.yaml").read_text())
    return grid


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------------------- stub trainer


JOB_TIMEOUT = 240.0  # s; generous: other test sessions may share this machine's cores


class StubTrainJob(TrainJob):
    """TrainJob with a stand-in trainer: optim.max_steps steps of step_s seconds; lr 0.5 raises."""

    step_s = 0.5

    def train(self, cfg: Any, stop: Any) -> int:
        run_dir, rank = Path(cfg.output_dir), int(os.environ.get("SLURM_PROCID", "0"))
        ckpt = run_dir / "stub_ckpt.json"
        start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
        total = cfg.optim.max_steps or 4
        if cfg.optim.lr == 0.5:
            raise ValueError("stub trainer: loss is nan at lr 0.5")
        step = start
        while step < total:
            time.sleep(self.step_s)
            step += 1
            if rank == 0:
                _write(run_dir / "progress.json", {"state": "running", "step": step, "total_steps": total,
                                                   "epoch": step / total, "loss": 1.0 / step})
            if stop():
                if rank == 0:
                    _write(ckpt, {"step": step})
                    _write(run_dir / "progress.json", {"state": "preempted", "step": step, "total_steps": total})
                return 3
        if rank == 0:
            _write(run_dir / "result.json", {"status": "completed", "steps": step, "epochs": 1.0, "resumed_from": start,
                                             "eval_accuracy": 0.5, "avg_train_loss": 0.25, "eval_loss": 0.3})
            _write(run_dir / "progress.json", {"state": "completed", "step": step, "total_steps": total})
        return 0


# The job process cannot import this test module: pickle its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def stub_jobs(slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> type[TrainJob]:
    monkeypatch.setattr(hpc.job, "TrainJob", StubTrainJob)
    return StubTrainJob


def _stub_grid(root: Path, name: str, lrs: list[float], steps: int, **slurm: Any) -> Path:
    (root / "data" / "beans").mkdir(parents=True, exist_ok=True)
    (root / "grids").mkdir(exist_ok=True)
    doc = _merge(BASE_GRID, {"name": name, "slurm": {"max_requeues": 20, **slurm},
                             "base": {"optim": {"max_steps": steps}}})
    doc["grid"] = {"optim.lr": lrs}
    path = root / "grids" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path



def _sacct_final(job_id: str, timeout: float = 60) -> SlurmJobState:
    """The job's end state in accounting (sacct learns it a few seconds after squeue)."""
    deadline = time.monotonic() + timeout
    while True:
        st = slurm_query.sacct_states([job_id]).get(job_id)
        if st is not None and st.state not in runstate.RUNNING_STATES | runstate.PENDING_STATES:
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} has no end state in sacct after {timeout:.0f} s: {st}")
        time.sleep(0.5)


@pytest.mark.slurm
def test_grid_runs_to_completion_and_resubmitting_is_idempotent(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "done3", [1e-3, 2e-3, 5e-3], steps=3)
    lines: list[str] = []
    first = submission.submit(grid, out=lines.append)
    ids = sorted(first.job_ids.values())
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array
    assert sum("submit" == d.why for d in first.decisions) == 3
    sts = wait_for_grid(grid, all_phase("finished"), "all finished", JOB_TIMEOUT)
    assert all(s.metric == "acc 0.5000" and s.restarts == 0 and s.step == 3 for s in sts)
    for s in sts:  # finished through the os._exit hook with exit code 0, and submitit got the result
        end = _sacct_final(s.job_id or "")
        assert (end.state, end.exit_code) == ("COMPLETED", "0:0")
    grid_dir = tmp_path / "runs" / "done3"
    assert (grid_dir / "grid.yaml").read_text().endswith(grid.read_text())
    # the script submitit wrote is the one --dry-run prints
    array = ids[0].split("_")[0]
    written = (grid_dir / ".submitit" / array / f"{array}_submission.sh").read_text()
    spec = submission.load_grid(grid)
    assert written == submission.render_sbatch(spec, site_profile.load_profile("local"), 3)
    # again: nothing to do
    lines.clear()
    again = submission.submit(grid, out=lines.append)
    assert again.job_ids == {} and all(d.why == "skip (finished)" for d in again.decisions)
    for s in grid_statuses(grid):
        rec = runstate.read_run_record(Path(s.run_dir))
        assert rec is not None and len(rec.submissions) == 1 and rec.grid == "done3"
    # status and report work from the grid folder alone
    assert cli_main(["status", str(grid_dir), "--format", "json"]) == 0
    assert cli_main(["report", str(grid_dir), "--format", "csv"]) == 0


@pytest.mark.slurm
def test_concurrent_submits_queue_each_run_once(stub_jobs: Any, tmp_path: Path) -> None:
    import threading

    grid = _stub_grid(tmp_path, "twice", [1e-3, 2e-3], steps=200)
    outcomes: list[submission.Outcome] = []
    threads = [threading.Thread(target=lambda: outcomes.append(submission.submit(grid, out=lambda _: None)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOB_TIMEOUT)
    assert len(outcomes) == 2
    assert sorted(len(o.job_ids) for o in outcomes) == [0, 2]
    skipped = next(o for o in outcomes if not o.job_ids)
    assert all(d.why.startswith("skip (running as job ") for d in skipped.decisions)
    assert submission.cancel(grid, out=lambda _: None)
    wait_for_grid(grid, all_phase("cancelled"), "cancelled", JOB_TIMEOUT)


@pytest.mark.slurm
def test_usr2_checkpoints_requeues_and_resumes(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "preempt", [1e-3], steps=16)
    job = submission.submit(grid, out=lambda _: None).job_ids.popitem()[1]
    wait_for_grid(grid, lambda sts: (sts[0].step or 0) >= 3, "3 steps done", JOB_TIMEOUT)
    # what Slurm sends signal_delay_s before the time limit, or on preemption
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    sts = wait_for_grid(grid, all_phase("finished"), "finished after requeue", timeout=2 * JOB_TIMEOUT)
    run_dir = Path(sts[0].run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from"] >= 3 and result["steps"] == 16  # the second attempt continued
    attempts = runstate.read_attempts(run_dir)
    assert [a["restart_count"] for a in attempts] == [0, 1] and sts[0].restarts == 1
    assert {a["job_id"] for a in attempts} == {job}  # requeued: same job id, no new submission
    assert len(runstate.read_run_record(run_dir).submissions) == 1  # type: ignore[union-attr]


@pytest.mark.slurm
def test_cancel_then_resume_finishes_from_the_checkpoint(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "cancel", [1e-3, 2e-3], steps=40)
    submission.submit(grid, out=lambda _: None)
    wait_for_grid(grid, lambda sts: all((s.step or 0) >= 2 for s in sts), "2 steps done", JOB_TIMEOUT)
    lines: list[str] = []
    cancelled = submission.cancel(grid, out=lines.append)
    assert len(cancelled) == 2 and all(line.startswith("cancel ") for line in lines)
    sts = wait_for_grid(grid, all_phase("cancelled"), "cancelled", JOB_TIMEOUT)
    assert all(s.failure.startswith("CANCELLED") for s in sts)
    # scancel's SIGTERM stopped the stub at a step boundary with a checkpoint (no requeue)
    assert all((Path(s.run_dir) / "stub_ckpt.json").exists() for s in sts)
    resumed = submission.resume(grid, out=lambda _: None)
    assert len(resumed.job_ids) == 2 and all(d.why == "submit (cancelled)" for d in resumed.decisions)
    sts = wait_for_grid(grid, all_phase("finished"), "finished after resume", JOB_TIMEOUT)
    for s in sts:
        rec = runstate.read_run_record(Path(s.run_dir))
        assert [x.reason for x in rec.submissions] == ["submit", "resume"]  # type: ignore[union-attr]
        assert json.loads((Path(s.run_dir) / "result.json").read_text())["resumed_from"] >= 2


@pytest.mark.slurm
def test_failed_run_shows_its_reason_and_resume_failed_only(stub_jobs: Any, tmp_path: Path) -> None:
    grid = _stub_grid(tmp_path, "fail", [1e-3, 0.5], steps=2)
    submission.submit(grid, out=lambda _: None)
    sts = wait_for_grid(grid, lambda sts: all(s.phase in runstate.SETTLED for s in sts), "settled", JOB_TIMEOUT)
    by_lr = {s.lr: s for s in sts}
    assert by_lr[1e-3].phase == "finished" and by_lr[0.5].phase == "failed"
    failed = by_lr[0.5]
    assert failed.failure_kind == "python_exception" and not failed.retry
    assert "loss is nan at lr 0.5" in failed.failure
    lines: list[str] = []
    # A Python exception repeats on a plain resubmission: resume --failed leaves it (and says why) ...
    again = submission.resume(grid, failed_only=True, out=lines.append)
    assert again.job_ids == {}
    assert any(line.startswith("skip (failed, not worth retrying") for line in lines), lines
    assert any(line.startswith("skip (finished)") for line in lines)
    # ... while a plain resume resubmits every unfinished run, this one included.
    again = submission.resume(grid, out=lines.append)
    assert list(again.job_ids) == [failed.name]


@pytest.mark.slurm
def test_time_limit_checkpoints_requeues_and_finishes(stub_jobs: Any, tmp_path: Path) -> None:
    """time_min=1 with USR2 30 s before it: the run needs ~35 s of steps, more than the 30 s before the
    signal, so it must stop, requeue and continue (submitit counts each such USR2 as a time-out:
    max_requeues=20 keeps it going)."""
    grid = _stub_grid(tmp_path, "timelimit", [1e-3], steps=70, time_min=1, signal_delay_s=30)
    submission.submit(grid, out=lambda _: None)
    sts = wait_for_grid(grid, all_phase("finished"), "finished across time limits", timeout=4 * JOB_TIMEOUT)
    attempts = runstate.read_attempts(Path(sts[0].run_dir))
    assert len(attempts) >= 2 and sts[0].restarts == len(attempts) - 1
    assert json.loads((Path(sts[0].run_dir) / "result.json").read_text())["resumed_from"] > 0
    end = _sacct_final(sts[0].job_id or "")
    assert (end.state, end.exit_code) == ("COMPLETED", "0:0")  # never hit the hard limit (TIMEOUT)


@pytest.mark.slurm
def test_real_preemption_by_the_urgent_partition(stub_jobs: Any, tmp_path: Path) -> None:
    """A job of the higher-priority partition takes the node: Slurm sends USR2 (preempt_send_user_signal),
    the run checkpoints and requeues, and continues once the node is free again."""
    grid = _stub_grid(tmp_path, "preempted", [1e-3], steps=30)
    job = submission.submit(grid, out=lambda _: None).job_ids.popitem()[1]
    wait_for_grid(grid, lambda sts: (sts[0].step or 0) >= 3, "3 steps done", JOB_TIMEOUT)
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, check=True).stdout.strip()
    cpus = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-w", node, "-c", cpus, "-o", str(tmp_path / "urgent.out"),
                             "--wrap", "sleep 5"], capture_output=True, text=True, check=True).stdout.strip()
    sts = wait_for_grid(grid, all_phase("finished"), "finished after preemption", timeout=3 * JOB_TIMEOUT)
    run_dir = Path(sts[0].run_dir)
    assert [a["restart_count"] for a in runstate.read_attempts(run_dir)] == [0, 1]
    assert json.loads((run_dir / "result.json").read_text())["resumed_from"] >= 3
    assert _sacct_final(urgent).state == "COMPLETED"
    assert _sacct_final(job).state == "COMPLETED"


# ---------------------------------------------------------------------------- end to end, real training
# The real TrainJob and trainer (tiny ViT preset, CPU, gloo) on the synthetic dataset, on the local
# Slurm: the grid, multi-node ranks from SLURM_*, real preemption, the time limit, cancel and resume.
def _real_grid(root: Path, name: str, dataset: Path, cache: Path, *, lrs: list[float], epochs: int,
               batch_size: int = 8, **slurm: Any) -> Path:
    (root / "grids").mkdir(exist_ok=True)
    doc = {
        "name": name, "output_root": "../runs", "profile": "local",
        "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 2,
                  "time_min": 10, "signal_delay_s": 60, "max_requeues": 20, **slurm},
        "base": {"model": {"name": "tiny"},
                 "data": {"dataset": str(dataset), "cache_dir": str(cache), "num_workers": 0},
                 "optim": {"epochs": epochs, "batch_size": batch_size},
                 "logging": {"log_every_n_steps": 5, "eval_every_n_epochs": max(epochs // 2, 1)},
                 "checkpoint": {"export_hf": False}},
        "grid": {"optim.lr": lrs},
    }
    path = root / "grids" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in runstate._read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]


@pytest.mark.slurm
@pytest.mark.slow
def test_e2e_grid_3x3_to_completion(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path, data_cache: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """grids/cpu_tiny.yaml as shipped (dataset path relative to the grid file), 9 runs in one array."""
    grid = _cpu_tiny_copy(tmp_path)
    (tmp_path / "demo_runs" / "data" / "beans_synthetic_v2").symlink_to(synthetic_dataset)
    monkeypatch.setenv("VIT_TRAIN_CACHE", str(data_cache))  # sbatch exports the submitting environment
    assert cli_main(["submit", str(grid)]) == 0
    sts = wait_for_grid(grid, all_phase("finished"), "9 runs finished", timeout=6 * JOB_TIMEOUT)
    assert len(sts) == 9 and len({s.job_id.split("_")[0] for s in sts if s.job_id}) == 1
    for s in sts:
        end = _sacct_final(s.job_id or "")
        assert (end.state, end.exit_code) == ("COMPLETED", "0:0"), s
        assert s.metric.startswith("acc ") and s.step == s.total_steps and s.restarts == 0
    from hpc.report import collect_rows

    rows = collect_rows([s.run_dir for s in sts])
    assert [(r.batch_size, r.state) for r in rows] == [(bs, "done") for bs in (8, 8, 8, 16, 16, 16, 32, 32, 32)]
    assert all(r.accuracy is not None and r.avg_train_loss is not None for r in rows)
    again = submission.submit(grid, out=lambda _: None)
    assert again.job_ids == {}


@pytest.mark.slurm
@pytest.mark.slow
def test_e2e_two_node_run_survives_real_preemption(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                   data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 nodes x 1 rank (gloo across "nodes"); a job of the urgent partition takes both nodes: USR2 on
    every rank, one collective checkpoint, requeue by rank 0, and the run resumes on 2 nodes.

    ``hold@step=11`` (vit_train/faults.py) keeps the ranks after step 11 until the real preemption
    signal arrives, so the preemption cannot miss a run that would otherwise finish first (it did
    once the tiny model's steps got faster); the resumed attempt does not hold again."""
    monkeypatch.setenv("VIT_TRAIN_FAULT", "hold@step=11")  # sbatch exports the submitting environment
    grid = _real_grid(tmp_path, "twonode", synthetic_dataset, data_cache, lrs=[1e-3], epochs=10, nodes=2)
    job = submission.submit(grid, out=lambda _: None).job_ids.popitem()[1]
    monkeypatch.delenv("VIT_TRAIN_FAULT")  # sbatch took it; the torchrun reference below must not hold
    wait_for_grid(grid, lambda sts: (sts[0].step or 0) >= 10, "10 steps done", timeout=2 * JOB_TIMEOUT)
    cpus = subprocess.run(["sinfo", "-h", "-n", "n1", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-N", "2", "-c", cpus, "-o", str(tmp_path / "urgent.out"),
                             "--wrap", "sleep 3"], capture_output=True, text=True, check=True).stdout.strip()
    sts = wait_for_grid(grid, all_phase("finished"), "finished after preemption", timeout=4 * JOB_TIMEOUT)
    run_dir = Path(sts[0].run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["world_size"], result["restarts"]) == (2, 1)
    assert [a["restart_count"] for a in runstate.read_attempts(run_dir)] == [0, 1]
    assert sorted(p.name for p in run_dir.glob(".fault-hold-*")) == [f".fault-hold-step-11-None-rank{r}" for r in (0, 1)]
    steps = _train_steps(run_dir)
    assert steps == sorted(set(steps)) and steps[-1] == result["steps"]  # resumed, no step logged twice
    assert _sacct_final(urgent).state == "COMPLETED"
    end = _sacct_final(job)
    assert (end.state, end.exit_code) == ("COMPLETED", "0:0")
    nodes = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "NodeList"], capture_output=True, text=True,
                           check=True).stdout
    assert nodes.strip() == "n[1-2]"

    # The same resolved config, uninterrupted, under torchrun on one host: the same result.
    rec = runstate.read_run_record(run_dir)
    assert rec is not None
    ref = tmp_path / "torchrun_ref"
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump({**rec.config, "output_dir": str(ref)}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "vit_train", "--config", str(tmp_path / "ref.yaml")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((ref / "result.json").read_text())
    assert expected["world_size"] == 2 and expected["steps"] == result["steps"]
    for key in ("eval_accuracy", "eval_loss", "avg_train_loss"):
        assert abs(result[key] - expected[key]) <= 1e-6, (key, result[key], expected[key])


@pytest.mark.slurm
@pytest.mark.slow
def test_e2e_time_limit_checkpoints_and_requeues(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                 data_cache: Path) -> None:
    """time_min=1 with USR2 30 s before it, and far more steps than fit: the first attempt stops at the
    signal with a checkpoint and requeues (never TIMEOUT), the second resumes from it. Then cancelled:
    finishing a run across time limits is covered quickly by the stub test above."""
    grid = _real_grid(tmp_path, "timelimit", synthetic_dataset, data_cache, lrs=[1e-3], epochs=5000,
                      time_min=1, signal_delay_s=30)
    job = submission.submit(grid, out=lambda _: None).job_ids.popitem()[1]
    run_dir = Path(grid_statuses(grid)[0].run_dir)
    try:
        sts = wait_for_grid(grid, lambda sts: sts[0].restarts >= 1 and sts[0].phase == "running" and
                        (sts[0].step or 0) > min(_ckpt_steps(run_dir) or [10**9]), "resumed after the time limit",
                        timeout=2 * JOB_TIMEOUT)
    finally:
        submission.cancel(grid, out=lambda _: None)
    assert [a["restart_count"] for a in runstate.read_attempts(run_dir)][:2] == [0, 1]
    assert sts[0].job_id == job  # requeued in place: same job id, no new submission
    history = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert history[0] == "REQUEUED" and "TIMEOUT" not in history, history


def _ckpt_steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")]


@pytest.mark.slurm
@pytest.mark.slow
def test_e2e_cancel_then_resume(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path, data_cache: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel a running 2-run grid, then resume it. ``hold@step=6`` (vit_train/faults.py) keeps each run
    after step 6 (step 5 is logged) until scancel's signal arrives: without it a run that started early could finish all
    its steps before the cancel reached it (seen once in CI: finished, then recorded CANCELLED)."""
    monkeypatch.setenv("VIT_TRAIN_FAULT", "hold@step=6")  # sbatch exports the submitting environment
    grid = _real_grid(tmp_path, "cancelres", synthetic_dataset, data_cache, lrs=[1e-3, 2e-3], epochs=10)
    submission.submit(grid, out=lambda _: None)
    monkeypatch.delenv("VIT_TRAIN_FAULT")  # the resumed jobs must not hold
    wait_for_grid(grid, lambda sts: all((s.step or 0) >= 5 for s in sts), "5 steps done", timeout=2 * JOB_TIMEOUT)
    assert len(submission.cancel(grid, out=lambda _: None)) == 2
    sts = wait_for_grid(grid, all_phase("cancelled"), "cancelled", JOB_TIMEOUT)
    # scancel's SIGTERM: every rank stopped at a step boundary and saved a checkpoint, no requeue
    assert all(list((Path(s.run_dir) / "checkpoints").glob("step-*")) for s in sts)
    assert all([p.name for p in Path(s.run_dir).glob(".fault-hold-*")] == [".fault-hold-step-6-None-rank0"] for s in sts)
    assert cli_main(["resume", str(grid)]) == 0
    sts = wait_for_grid(grid, all_phase("finished"), "finished after resume", timeout=3 * JOB_TIMEOUT)
    for s in sts:
        result = json.loads((Path(s.run_dir) / "result.json").read_text())
        assert result["restarts"] == 1 and s.restarts == 1
        rec = runstate.read_run_record(Path(s.run_dir))
        assert [x.reason for x in rec.submissions] == ["submit", "resume"]  # type: ignore[union-attr]


@pytest.mark.slurm
def test_force_starts_over_and_never_runs_two_jobs_on_one_folder(stub_jobs: Any, tmp_path: Path) -> None:
    done = _stub_grid(tmp_path, "forcedone", [1e-3], steps=2)
    first = submission.submit(done, out=lambda _: None).job_ids
    wait_for_grid(done, all_phase("finished"), "finished", JOB_TIMEOUT)
    again = submission.submit(done, force=True, out=lambda _: None).job_ids
    assert again.keys() == first.keys() and again != first
    sts = wait_for_grid(done, all_phase("finished"), "finished again", JOB_TIMEOUT)
    run_dir = Path(sts[0].run_dir)
    previous = list((run_dir / "previous").iterdir())
    assert len(previous) == 1 and (previous[0] / "result.json").exists() and (previous[0] / "attempts.jsonl").exists()
    assert [s.reason for s in runstate.read_run_record(run_dir).submissions] == ["submit", "force"]  # type: ignore[union-attr]
    assert len(runstate.read_attempts(run_dir)) == 1  # the new start only

    live = _stub_grid(tmp_path, "forcelive", [1e-3], steps=400)
    old = submission.submit(live, out=lambda _: None).job_ids.popitem()[1]
    wait_for_grid(live, lambda sts: (sts[0].step or 0) >= 1, "running", JOB_TIMEOUT)
    new = submission.submit(live, force=True, out=lambda _: None).job_ids.popitem()[1]
    assert _sacct_final(old).state == "CANCELLED"  # cancelled and gone before the new one was queued
    assert submission.cancel(live, out=lambda _: None) == [new]


@pytest.mark.slurm
@pytest.mark.slow
def test_e2e_sbatch_template_requeues_on_exit_3(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                data_cache: Path) -> None:
    """slurm_templates/vit_train.sbatch as a user would send it (GPU lines overridden on the command line):
    USR2 reaches the python ranks under srun (not the batch shell), they exit 3 with a checkpoint, the
    script requeues the job, and the second attempt resumes and completes."""
    out = tmp_path / "run"
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({
        "model": {"name": "tiny"}, "output_dir": str(out),
        "data": {"dataset": str(synthetic_dataset), "cache_dir": str(data_cache), "num_workers": 0},
        "optim": {"epochs": 4, "batch_size": 8}, "checkpoint": {"export_hf": False},
        "logging": {"log_every_n_steps": 1, "eval_every_n_epochs": 2}}))
    job = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
                          "--mem=2G", "--time=10", f"--output={tmp_path}/%x-%j.out",
                          str(REPO / "slurm_templates" / "vit_train.sbatch"), str(run_yaml)],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    log = tmp_path / f"vit_train-{job}.out"
    end = None
    try:
        deadline = time.monotonic() + 2 * JOB_TIMEOUT
        while ((runstate._read_json(out / "progress.json") or {}).get("step") or 0) < 5:
            assert time.monotonic() < deadline, f"5 steps not reached; queue: {_squeue()}"
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        deadline = time.monotonic() + 4 * JOB_TIMEOUT
        while not (out / "result.json").exists():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # result.json is written before the ranks and the batch script exit: wait for the job to end
        # on its own (a scancel now races with that end and can record CANCELLED)
        end = _sacct_final(job, timeout=JOB_TIMEOUT)
    finally:
        if end is None:  # the test failed before the job ended: do not leave it queued
            subprocess.run(["scancel", job], check=False)
    assert json.loads((out / "result.json").read_text())["restarts"] == 1
    assert (end.state, end.exit_code) == ("COMPLETED", "0:0")
    text = log.read_text()
    assert f"requeueing job {job}" in text and "attempt 2" in text
    assert "step/s]" not in text  # no progress bar: the ranks write to a file, not a pseudo-terminal
