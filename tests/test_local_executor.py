"""``submit --local`` / ``resume --local`` on a machine without Slurm: real processes, real training.

Every command runs as a user would type it (``python submit.py ...``) with a PATH that holds every
program of this machine except Slurm's (sbatch, squeue, sacct, scontrol, ...), so nothing can reach
the dev cluster. A 3-run CPU grid with ``runs_per_gpu: 2`` (two runs at a time, one process each,
on the tiny ViT) is stopped by a Ctrl-C to the runner's process group while two runs are held at a
step (``hold@step``, vit_train/faults.py) and the third waits for a slot; ``status`` shows why each
stopped, ``resume --local`` finishes all three (the two from their checkpoints), and ``status`` and
``report`` read the folders. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpc import runstate
from tests.train_utils import REPO, child_env

SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scontrol", "sinfo", "srun", "scancel", "salloc", "sacctmgr", "sstat"}
HOLD_AT = 3


def _path_without_slurm(root: Path) -> str:
    """A folder of links to every program on PATH but Slurm's."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for exe in entries:
            link = bin_dir / exe.name
            if exe.name not in SLURM_COMMANDS and not link.exists() and os.access(exe, os.X_OK):
                link.symlink_to(exe)
    return str(bin_dir)


def _submit_py(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "submit.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _step(run_dir: Path) -> int:
    return int((runstate._read_json(run_dir / "progress.json") or {}).get("step") or 0)


@pytest.mark.slow
def test_local_grid_without_slurm_stops_on_ctrl_c_and_resumes(tmp_path: Path, synthetic_dataset: Path,
                                                               data_cache: Path) -> None:
    grid = tmp_path / "grids" / "loc.yaml"
    grid.parent.mkdir()
    grid.write_text(yaml.safe_dump({
        "name": "loc", "output_root": "../runs", "profile": "local",
        "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 2, "runs_per_gpu": 2},
        "base": {"model": {"name": "tiny"},
                 "data": {"dataset": str(synthetic_dataset), "cache_dir": str(data_cache), "num_workers": 0},
                 "optim": {"epochs": 1, "max_steps": 8, "batch_size": 8},
                 "logging": {"log_every_n_steps": 1}, "checkpoint": {"export_hf": False}},
        "grid": {"optim.lr": [1e-3, 2e-3, 5e-3]}}, sort_keys=False))
    env = child_env(PATH=_path_without_slurm(tmp_path))
    assert subprocess.run(["bash", "-c", "command -v sbatch squeue sacct scontrol"], env=env).returncode != 0

    # 1. Two runs start (two slots), reach the hold; Ctrl-C to the runner's process group stops both with a
    #    checkpoint; the third run never got a slot.
    runner = subprocess.Popen([sys.executable, str(REPO / "submit.py"), "submit", str(grid), "--local"], cwd=REPO,
                              env={**env, "VIT_TRAIN_FAULT": f"hold@step={HOLD_AT}"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    grid_dir = tmp_path / "runs" / "loc"
    deadline = time.monotonic() + 240
    try:
        while sum(_step(d) >= HOLD_AT - 1 for d in grid_dir.glob("lr*")) < 2:
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0][-4000:]
            time.sleep(0.3)
        os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends: the runner and its children
        out = runner.communicate(timeout=180)[0]
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 1, out[-4000:]
    assert "SIGINT: stopping every run" in out and "0 of 3 runs finished (3 cancelled)" in out, out[-4000:]
    assert "learning rate" in out and "accuracy" in out  # the results table, as `report` prints it
    status = _submit_py(["status", str(grid), "--format", "json"], env)
    assert status.returncode == 0, status.stderr
    by_lr = {s["lr"]: s for s in json.loads(status.stdout)}
    started = [s for s in by_lr.values() if "with a checkpoint" in s["failure"]]
    waiting = [s for s in by_lr.values() if "before starting it" in s["failure"]]
    assert len(started) == 2 and len(waiting) == 1 and all(s["phase"] == "cancelled" for s in by_lr.values()), by_lr
    for s in started:
        assert list((Path(s["run_dir"]) / "checkpoints").glob("step-*")), s
        assert runstate._read_json(Path(s["run_dir"]) / "progress.json")["state"] == "preempted"

    # 2. resume --local finishes all three, the stopped ones from their checkpoints.
    resumed = _submit_py(["resume", str(grid), "--local"], env)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "3 of 3 runs finished (3 finished)" in resumed.stdout, resumed.stdout[-3000:]
    status = _submit_py(["status", str(grid), "--format", "json"], env)
    final = json.loads(status.stdout)
    assert all(s["phase"] == "finished" and s["slurm_state"] == "COMPLETED" for s in final), final
    for s in final:
        run_dir = Path(s["run_dir"])
        was_started = s["name"] in {x["name"] for x in started}
        result = json.loads((run_dir / "result.json").read_text())
        assert (result["restarts"], s["restarts"]) == ((1, 1) if was_started else (0, 0)), (s, result)
        rec = runstate.read_run_record(run_dir)
        assert rec is not None and [x.reason for x in rec.submissions] == ["submit", "resume"]
        assert all(x.job_id.startswith("local-") for x in rec.submissions)
        steps = [r["step"] for r in runstate._read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
        assert steps == list(range(1, 9)), steps  # each step once: resumed after the checkpointed one
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    report = _submit_py(["report", str(grid_dir), "--format", "json"], env)
    rows = json.loads(report.stdout)
    assert report.returncode == 0 and len(rows) == 3 and all(r["accuracy"] is not None for r in rows), report.stdout
