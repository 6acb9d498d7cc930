"""Several runs per GPU and the local executor: the pure parts (runs anywhere, no Slurm, no training).

``slurm.runs_per_gpu`` validation, how runs are dealt to tasks, the memory estimate and the preflight
message, the process records that give local and packed runs their state, the child environment and
CPU split, the local slots, and the sbatch script's array size. The flows themselves (real Slurm,
real training, real signals) are in tests/test_packing_slurm.py and tests/test_local_executor.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from hpc import local, packing, procpool, procstate, runstate, site_profile, submission
from hpc.grid import parse_grid
from hpc.slurm_query import SlurmJobState
from hpc.slurm_resources import SlurmResources
from vit_train.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- slurm.runs_per_gpu
@pytest.mark.parametrize("kwargs, words", [
    (dict(runs_per_gpu=0), ["slurm.runs_per_gpu=0", "1 or more"]),
    (dict(runs_per_gpu=2.0), ["slurm.runs_per_gpu=2.0", "integer"]),
    (dict(runs_per_gpu=3, nodes=2), ["slurm.runs_per_gpu=3", "nodes=2", "set nodes: 1"]),
    (dict(runs_per_gpu=3, gpus_per_node=2), ["slurm.runs_per_gpu=3", "gpus_per_node=2", "set gpus_per_node: 1"]),
    (dict(runs_per_gpu=3, gpus_per_node=0, tasks_per_node=2), ["slurm.runs_per_gpu=3", "tasks_per_node=2"]),
])
def test_runs_per_gpu_validation(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        SlurmResources(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_runs_per_gpu_defaults_to_one_and_packs_one_gpu_or_cpu_runs() -> None:
    assert SlurmResources().runs_per_gpu == 1
    assert SlurmResources(runs_per_gpu=9).world_size == 1
    assert SlurmResources(runs_per_gpu=4, gpus_per_node=0, tasks_per_node=1).device_type == "cpu"


# ---------------------------------------------------------------------------- packing
def test_pack_deals_round_robin_into_ceil_n_over_k_tasks() -> None:
    assert packing.pack(list(range(9)), 3) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert packing.pack(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert packing.pack(list(range(5)), 3) == [[0, 2, 4], [1, 3]]
    assert packing.pack(list(range(2)), 9) == [[0, 1]]
    assert packing.pack([], 3) == []
    assert [packing.num_tasks(n, 3) for n in (1, 3, 4, 9, 10)] == [1, 1, 2, 3, 4]


def _grid(tmp_path: Path, **slurm: Any) -> Any:
    doc = {"name": "g", "profile": "local", "output_root": str(tmp_path / "runs"),
           "slurm": {"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 16, **slurm},
           "base": {"model": {"name": "vit_b16"}, "data": {"dataset": str(tmp_path)},
                    "optim": {"optimizer": "hybrid_adam"}, "parallel": {"plugin": "gemini"}, "precision": "bf16"},
           "grid": {"optim.batch_size": [8, 16, 32], "optim.lr": [1e-4, 2e-4, 5e-4]}}
    return parse_grid(doc, base_dir=tmp_path, source=str(tmp_path / "g.yaml"))


def test_packing_changes_no_signature_and_records_neighbours(tmp_path: Path) -> None:
    from hpc.grid import expand

    packed, alone = expand(_grid(tmp_path, runs_per_gpu=3)), expand(_grid(tmp_path))
    assert [r.signature for r in packed] == [r.signature for r in alone]
    assert [r.run_dir for r in packed] == [r.run_dir for r in alone]
    groups = submission.task_groups(_grid(tmp_path, runs_per_gpu=3), packed)
    assert [[r.config.optim.batch_size for r in g] for g in groups] == [[8, 16, 32]] * 3  # one of each per task
    near = packing.neighbours(groups)
    assert near[packed[0].name] == (packed[3].name, packed[6].name)
    assert submission.task_groups(_grid(tmp_path), alone) == [[r] for r in alone]


def test_sbatch_script_has_one_task_per_pack(tmp_path: Path) -> None:
    profile = site_profile.load_profile("local")
    script = submission.render_sbatch(_grid(tmp_path, runs_per_gpu=3), profile, 9)
    assert "#SBATCH --array=0-2%3\n" in script
    assert "--array" not in submission.render_sbatch(_grid(tmp_path, runs_per_gpu=9), profile, 9)  # one task: one job
    assert "#SBATCH --array=0-8%9\n" in submission.render_sbatch(_grid(tmp_path), profile, 9)


# ---------------------------------------------------------------------------- memory
def _cfg(**over: Any) -> RunConfig:
    base = {"model": {"name": "vit_b16"}, "optim": {"optimizer": "hybrid_adam", "batch_size": 32},
            "parallel": {"plugin": "gemini"}, "precision": "bf16"}
    for k, v in over.items():
        section, leaf = k.split(".")
        base[section][leaf] = v
    return RunConfig.from_dict(base)


def test_estimate_matches_the_measured_vit_b16_figures() -> None:
    """BENCHMARKS.md runs 28-29 measured 14.9 / 28.4 GiB allocated at batch 256 / 512 (H100, bf16)."""
    for batch, allocated in ((256, 14.9), (512, 28.4)):
        est = packing.estimate_gib(_cfg(**{"optim.batch_size": batch}))
        assert est is not None
        without_margins = (est.gib - packing.CONTEXT_GIB) / (1 + packing.SLACK_FRACTION)
        assert abs(without_margins - allocated) / allocated < 0.08, (batch, without_margins)
    small = [packing.estimate_gib(_cfg(**{"optim.batch_size": b})).gib for b in (8, 16, 32)]  # type: ignore[union-attr]
    assert 2.0 < small[0] < small[1] < small[2] < 4.5  # measured 2-3 GiB per packed run on an H200
    fp32 = packing.estimate_gib(RunConfig.from_dict({"model": {"name": "vit_b16"}, "optim": {"batch_size": 32}}))
    assert fp32 is not None and fp32.gib > small[2]
    assert packing.estimate_gib(RunConfig.from_dict({"model": {"name": "someone/unknown-vit"}})) is None


def test_measured_footprint_wins_over_the_estimate(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 1, "mem_gib": 1.5}, {"kind": "eval", "step": 1}, {"kind": "train", "step": 2, "mem_gib": 2.0},
    ]) + "\nnot json\n")
    fp = packing.measured_gib(tmp_path)
    assert fp is not None and fp.how.startswith("measured") and fp.gib == pytest.approx(0.6 + 2.0 * 1.15)
    assert packing.measured_gib(tmp_path / "none") is None


def test_check_memory_names_the_largest_k_that_fits(tmp_path: Path) -> None:
    from hpc.grid import expand

    runs = expand(_grid(tmp_path, runs_per_gpu=9))
    field, message = packing.check_memory(runs, 9, 16.0, "profile local")  # type: ignore[misc]
    assert field == "slurm.runs_per_gpu"
    worst = packing.estimate_gib(_cfg()).gib  # type: ignore[union-attr]
    fits = int(16 * packing.USABLE_FRACTION // worst)
    assert fits == 3 and f"use runs_per_gpu: {fits} or less" in message, message
    assert "bs32" in message and "gpu_mem_gb=16 of profile local" in message
    assert packing.check_memory(runs, 3, 16.0, "x") is None
    assert packing.check_memory(runs, 9, 80.0, "x") is None  # an H100 holds nine
    assert packing.check_memory(runs, 9, None, "x") is None  # no figure: nothing to check
    assert "a single run does not fit" in packing.check_memory(runs, 2, 3.0, "x")[1]  # type: ignore[index]


def test_profile_gpu_mem_gb(tmp_path: Path) -> None:
    assert site_profile.load_profile("example_site").gpu_mem_gb == 80
    (tmp_path / "bad.yaml").write_text("description: x\ngpu_mem_gb: lots\n")
    with pytest.raises(site_profile.ProfileError, match="gpu_mem_gb='lots'"):
        site_profile.load_profile("bad", tmp_path)
    (tmp_path / "none.yaml").write_text("description: x\n")
    assert site_profile.load_profile("none", tmp_path).gpu_mem_gb is None


# ---------------------------------------------------------------------------- process records
def _rec(**kw: Any) -> procstate.ProcessRecord:
    base = dict(job_id="local-7_0", host=procstate.hostname(), runner_pid=7, runner_start=1, queued_at=0.0)
    return procstate.ProcessRecord(**{**base, **kw})


@pytest.mark.parametrize("rec, alive, state, reason", [
    (dict(), {7: True}, "PENDING", "Resources"),
    (dict(), {7: False}, "CANCELLED", "runner stopped before starting it"),
    (dict(exit_code=3), {7: False}, "CANCELLED", "runner stopped before starting it"),  # never got a slot
    (dict(pid=9, pid_start=5), {9: True}, "RUNNING", ""),
    (dict(pid=9, pid_start=5), {9: False}, "FAILED", "ended without an exit record"),
    (dict(pid=9, exit_code=0), {}, "COMPLETED", ""),
    (dict(pid=9, exit_code=3), {}, "CANCELLED", "with a checkpoint"),
    (dict(pid=9, exit_code=1), {}, "FAILED", "exit code 1"),
    (dict(pid=9, exit_code=-9), {}, "FAILED", "killed by SIGKILL"),
    (dict(pid=9, host="elsewhere"), {}, "RUNNING", "on elsewhere"),
])
def test_local_state(rec: dict[str, Any], alive: dict[int, bool], state: str, reason: str) -> None:
    def fake_alive(host: str, pid: int | None, start: int | None) -> bool | None:
        return None if host != procstate.hostname() else alive.get(pid or -1, False)

    st = procstate.local_state(_rec(**rec), "local-7_0", "g", fake_alive)
    assert (st.state, st.name) == (state, "g") and reason in st.reason, st
    assert procstate.local_state(_rec(), "local-8_0", "g").state == "FAILED"  # another runner's record


def test_packed_run_failure_overrides_the_running_task(tmp_path: Path) -> None:
    running = SlurmJobState("12_0", "RUNNING", name="g")
    assert procstate.job_state(tmp_path, "12_0", running, "g") is running  # no record: Slurm's
    procstate.write_record(tmp_path, _rec(job_id="12_0", pid=9, exit_code=-9))
    st = procstate.job_state(tmp_path, "12_0", running, "g")
    assert st is not None and (st.state, st.exit_code) == ("FAILED", "0:9") and "SIGKILL" in st.reason
    assert procstate.failed_in(tmp_path, "12_0") and not procstate.failed_in(tmp_path, "13_0")
    assert procstate.job_state(tmp_path, "13_0", running, "g") is running  # an older job's record
    procstate.write_record(tmp_path, _rec(job_id="12_0", pid=9, exit_code=3))
    assert procstate.job_state(tmp_path, "12_0", running, "g") is running  # stopped for a requeue: Slurm's


def test_status_of_a_local_run_needs_no_slurm(tmp_path: Path) -> None:
    run_dir = tmp_path / "g" / "r1"
    record = runstate.RunRecord("abc", "r1", "g", {}, {"optim": {"batch_size": 8, "lr": 0.1}})
    runstate.add_submission(run_dir, record, "local-7_0", "submit")
    procstate.write_record(run_dir, _rec(pid=os.getpid(), pid_start=procstate.pid_start(os.getpid())))
    out, err = procstate.log_paths(run_dir, "local-7_0")
    err.parent.mkdir()
    err.write_text('Traceback (most recent call last):\n  File "/x.py", line 3, in f\n    g()\nValueError: bad lr\n')
    assert runstate.run_state(run_dir, {}).phase == "running"
    procstate.ended(run_dir, "local-7_0", 1)
    st = runstate.run_state(run_dir, {})
    assert (st.phase, st.failure_kind, st.job_id) == ("failed", "python_exception", "local-7_0")
    assert "ValueError: bad lr" in st.failure
    assert runstate.stderr_path(run_dir, "local-7_0") == err


def test_record_attempt_takes_the_launchers_job_id(tmp_path: Path) -> None:
    entry = runstate.record_attempt(tmp_path, {"SLURM_JOB_ID": "5", procstate.JOB_ID_ENV: "12_3"})
    assert entry["job_id"] == "12_3"
    assert runstate.record_attempt(tmp_path, {"SLURM_JOB_ID": "5"})["job_id"] == "5"


def test_old_run_json_without_packed_with_still_reads(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"signature": "s", "name": "n", "submissions": [
        {"job_id": "1", "submitted_at": 1.0, "reason": "submit"}]}))
    rec = runstate.read_run_record(tmp_path)
    assert rec is not None and rec.submissions[0].packed_with == ()


# ---------------------------------------------------------------------------- processes and slots
def test_child_env_is_a_world_of_one() -> None:
    base = {"SLURM_PROCID": "0", "SLURM_JOB_ID": "12", "SUBMITIT_EXECUTOR": "slurm", "RANK": "0", "MASTER_PORT": "1",
            "OMP_NUM_THREADS": "8", "PYTHONPATH": "/x"}
    env = procpool.child_env(base, procpool.Slot("1", (4, 5)), "12_0")
    assert "SLURM_PROCID" not in env and "RANK" not in env and "SUBMITIT_EXECUTOR" not in env
    assert (env["SLURM_JOB_ID"], env[procstate.JOB_ID_ENV], env["CUDA_VISIBLE_DEVICES"]) == ("12", "12_0", "1")
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/x"]
    inherit = procpool.child_env({"CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "1"}, procpool.Slot(None, (0, 1)), "j")
    assert inherit["CUDA_VISIBLE_DEVICES"] == "3" and inherit["OMP_NUM_THREADS"] == "1"


def test_split_cpus() -> None:
    assert procpool.split_cpus(range(8), 3) == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert procpool.split_cpus([0, 1], 3) == [(0,), (1,), (0,)]
    assert procpool.split_cpus([], 2) == [(), ()]


def test_local_slots(tmp_path: Path) -> None:
    gpu = _grid(tmp_path, runs_per_gpu=3)
    slots = local.slots_for(gpu, ["0", "1"], list(range(12)))
    assert [s.cuda_visible for s in slots] == ["0", "0", "0", "1", "1", "1"] and all(len(s.cpus) == 2 for s in slots)
    cpu = dataclasses.replace(gpu, slurm=SlurmResources(gpus_per_node=0, tasks_per_node=1, runs_per_gpu=2))
    assert [s.cuda_visible for s in local.slots_for(cpu, [], [0, 1])] == ["", ""]
    with pytest.raises(local.LocalError, match="no GPU is visible"):
        local.slots_for(gpu, [], [0])
    multi = dataclasses.replace(gpu, slurm=SlurmResources(nodes=2, gpus_per_node=1))
    with pytest.raises(local.LocalError, match="one-process runs"):
        local.slots_for(multi, ["0"], [0])


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_profile_env_expands_like_the_jobs_shell() -> None:
    env = local.profile_env(site_profile.load_profile("local"), {"PATH": os.environ["PATH"], "PYTHONPATH": "/p"})
    assert env["PYTHONPATH"] == f"{REPO}:/p" and env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert local.profile_env(site_profile.load_profile("local"), {"PATH": os.environ["PATH"]})["PYTHONPATH"] == str(REPO)


def test_exit_text() -> None:
    assert procstate.exit_text(0) == ("0:0", "exit code 0")
    assert procstate.exit_text(-signal.SIGKILL) == ("0:9", "killed by SIGKILL")
    assert re.fullmatch(r"1:0", procstate.exit_text(1)[0])


def test_a_packed_task_leaves_a_run_submitted_again_since(tmp_path: Path) -> None:
    """Its run.json names a later submission under another id: that job owns the folder now; an earlier one
    (run.json not yet written for this task, which may start the moment sbatch returns) does not count."""
    from hpc.packed import PackedJob

    run_dir = tmp_path / "r"
    record = runstate.RunRecord("abc", "r", "g", {}, {})
    job = PackedJob([], created_at=100.0)
    runstate.add_submission(run_dir, record, "7_0", "submit", at=50.0)
    assert not job._resubmitted(run_dir, "9_1")  # the previous submission: ours is not recorded yet
    runstate.add_submission(run_dir, record, "9_1", "submit", at=101.0)
    assert not job._resubmitted(run_dir, "9_1")  # ours
    runstate.add_submission(run_dir, record, "12_0", "resume", at=300.0)
    assert job._resubmitted(run_dir, "9_1")
    assert PackedJob([], 100.0).checkpoint().function.created_at == 100.0  # a requeue keeps the submit time
