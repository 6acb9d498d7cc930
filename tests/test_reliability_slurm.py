"""Nothing lost under preemption, cancellation and node failure, on the local real Slurm; and failure triage.

Triage (hpc/triage.py) is pure and tested first with real log lines (Slurm's, torch's, NCCL's, gloo's).

The Slurm tests (marked ``slurm``) run the real TrainJob and trainer (tiny ViT, torch_ddp fp32, 2 ranks of
gloo on CPU) through ``submit``. A seeded plan (``random.Random(seed)``, seed printed and recorded;
RELIABILITY_SEED overrides it) sends ``scancel --signal=USR2`` at random steps, in the evaluation window,
and while a checkpoint is being written (``.tmp-step-*`` present), then a real preemption by a job of the
``urgent`` partition. Each run must finish with per-step losses, data order, final weights and eval
metrics equal (1e-6) to an uninterrupted torchrun run of the very same resolved config. The dev cluster
is started once per session by tests/conftest.py; every wait has a timeout. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc import runstate, submission
from hpc.triage import KINDS, Triage, classify_failure, last_exception
from tests import reliability_report
from tests.slurm_utils import grid_statuses, run_differs
from tests.train_utils import REPO, child_env, free_port

# ---------------------------------------------------------------------------- triage, pure
TRACEBACK = """\
2026-11-24 11:51:10,100 [rank 0] vit_train.trainer: setup took data 1.70s
submitit ERROR (2026-11-24 11:51:11,032) - Submitted job triggered an exception
Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/submitit/core/_submit.py", line 11, in <module>
    submitit_main()
  File "/work/main/hpc/job.py", line 88, in __call__
    code = self.train(cfg, stop)
  File "/work/main/vit_train/trainer.py", line 112, in setup
    raise ValueError(
ValueError: optim.batch_size=64 is larger than the 48 training samples; use a smaller batch size
srun: error: n1: task 0: Exited with exit code 1
"""
NCCL = """\
[rank1]:[E1124 11:02:33.123456 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.
Traceback (most recent call last):
  File "/work/main/vit_train/distributed.py", line 80, in all_reduce_sum
    dist.all_reduce(t)
torch.distributed.DistBackendError: NCCL communicator was aborted on rank 1.
"""
GLOO = """\
Traceback (most recent call last):
  File "/work/main/vit_train/distributed.py", line 80, in all_reduce_sum
    dist.all_reduce(t)
RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation to complete
"""
CUDA_OOM = """\
Traceback (most recent call last):
  File "/work/main/vit_train/trainer.py", line 240, in train_step
    logits = self.model(pixel_values=x).logits
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.23 GiB is free.
[rank0]:[E1124 11:12:00 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=BROADCAST) ran for 600001 milliseconds before timing out.
"""
SLURM_OOM = ("slurmstepd-n1: error: Detected 1 oom_kill event in StepId=77.0. Some of the step tasks have been OOM Killed.\n"
             "srun: error: n1: task 0: Out Of Memory\n")
TIME_LIMIT = "slurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-11-24T10:00:00 DUE TO TIME LIMIT ***\n"
PREEMPTION = "slurmstepd-n1: error: *** JOB 31 ON n1 CANCELLED AT 2026-11-24T10:00:00 DUE TO PREEMPTION ***\n"
NODE_FAILURE = "slurmstepd-n1: error: *** JOB 14 ON n1 CANCELLED AT 2026-11-24T10:00:00 DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***\n"
CANCELLED = ("slurmstepd-n1: error: *** STEP 59.0 ON n1 CANCELLED AT 2026-11-24T11:50:51 ***\n"
             "slurmstepd-n1: error: *** JOB 59 ON n1 CANCELLED AT 2026-11-24T11:50:51 ***\nsrun: error: n1: task 0: Terminated\n")


@pytest.mark.parametrize("state, code, reason, log, kind, retry, detail", [
    ("FAILED", "1:0", "NonZeroExitCode", TRACEBACK, "python_exception", False,
     ('ValueError: optim.batch_size=64 is larger than the 48 training samples; use a smaller batch size '
      '(File "/work/main/vit_train/trainer.py", line 112, in setup)')),
    ("FAILED", "1:0", "NonZeroExitCode", NCCL, "collective_timeout", True, "Watchdog caught collective operation timeout"),
    ("FAILED", "1:0", "NonZeroExitCode", GLOO, "collective_timeout", True, "Timed out waiting 1800000ms for recv"),
    ("FAILED", "1:0", "NonZeroExitCode", CUDA_OOM, "out_of_memory", False, "torch.OutOfMemoryError: CUDA out of memory"),
    ("OUT_OF_MEMORY", "0:125", "OutOfMemory", SLURM_OOM, "out_of_memory", False, "raise slurm.mem_gb"),
    ("FAILED", "0:9", "", SLURM_OOM, "out_of_memory", False, "Out Of Memory"),
    ("TIMEOUT", "0:0", "TimeLimit", TIME_LIMIT, "time_limit", True, "Slurm: TIMEOUT"),
    ("FAILED", "0:15", "", TIME_LIMIT, "time_limit", True, "DUE TO TIME LIMIT"),
    ("PREEMPTED", "0:0", "", PREEMPTION, "preempted", True, "preempted"),
    (None, None, None, PREEMPTION, "preempted", True, "DUE TO PREEMPTION"),
    ("NODE_FAIL", "0:0", "NodeFail", NODE_FAILURE, "node_failure", True, "node failure (NodeFail)"),
    ("FAILED", "0:0", "", NODE_FAILURE, "node_failure", True, "DUE TO NODE FAILURE"),
    ("CANCELLED", "0:15", "", CANCELLED, "cancelled", False, "cancelled"),
    (None, None, None, CANCELLED, "cancelled", False, "cancelled"),
    ("FAILED", "0:9", "", "some line\nsrun: error: n1: task 0: Killed\n", "unknown", False, "FAILED exit 0:9"),
    (None, None, None, "", "unknown", False, "no Slurm record and no log"),
], ids=["exception", "nccl_timeout", "gloo_timeout", "cuda_oom_beats_timeout", "slurm_oom_state", "oom_kill_log",
        "timeout_state", "time_limit_log", "preempted_state", "preemption_log", "node_fail_state", "node_failure_log",
        "cancelled_state", "cancelled_log", "unknown_sigkill", "nothing"])
def test_classify_failure(state: str | None, code: str | None, reason: str | None, log: str, kind: str, retry: bool,
                          detail: str) -> None:
    t = classify_failure(state, code, reason, log)
    assert isinstance(t, Triage) and t.kind in KINDS
    assert (t.kind, t.retry) == (kind, retry), t
    assert detail in t.detail, t.detail
    assert "\n" not in t.detail and len(t.detail) <= 300


def test_last_exception_takes_the_last_traceback() -> None:
    text = TRACEBACK + "\nTraceback (most recent call last):\n  File \"/x.py\", line 3, in g\n    h()\nKeyError: 'lr'\n"
    assert last_exception(text) == ('File "/x.py", line 3, in g', "KeyError: 'lr'")
    assert last_exception("no traceback here") is None


# ---------------------------------------------------------------------------- Slurm: seeded preemptions
SEED = int(os.environ.get("RELIABILITY_SEED", "20261124"))
STEPS, CKPT_EVERY, STEPS_PER_EPOCH = 36, 6, 12  # 96 samples / batch 8
WAIT_S = 420.0


def _grid(root: Path, name: str, dataset: Path, cache: Path, lrs: list[float], **slurm: Any) -> Path:
    (root / "grids").mkdir(exist_ok=True)
    doc = {
        "name": name, "output_root": "../runs", "profile": "local",
        "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 2,
                  "time_min": 10, "signal_delay_s": 60, "max_requeues": 30, **slurm},
        "base": {"model": {"name": "tiny"}, "seed": 42,
                 "data": {"dataset": str(dataset), "cache_dir": str(cache), "num_workers": 0},
                 "optim": {"epochs": 3, "max_steps": STEPS, "batch_size": 8, "max_grad_norm": 0.0},
                 "parallel": {"plugin": "torch_ddp"}, "precision": "fp32",
                 "logging": {"log_every_n_steps": 1, "eval_every_n_epochs": 1, "tensorboard": False},
                 "checkpoint": {"every_n_steps": CKPT_EVERY, "export_hf": True}},
        "grid": {"optim.lr": lrs},
    }
    path = root / "grids" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _progress(run_dir: Path) -> dict[str, Any]:
    return runstate._read_json(run_dir / "progress.json") or {}


def _squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    return out.strip()


def _plan(rng: random.Random) -> list[tuple[str, int]]:
    """Per run: 4 USR2 at random steps, 1 in the evaluation window after an epoch, 1 during a checkpoint write."""
    steps = sorted(rng.sample(range(2, STEPS - 2), 4))
    eval_step = rng.choice([STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH])
    ckpt_step = rng.choice(range(CKPT_EVERY, STEPS - 1, CKPT_EVERY))
    plan = [("usr2@step", s) for s in steps] + [("usr2@eval", eval_step), ("usr2@ckpt", ckpt_step)]
    return sorted(plan, key=lambda p: p[1])  # in step order: each fires at its step, not at the next start


def _ready(run_dir: Path, job: str, attempts_before: int) -> tuple[bool, int]:
    """(a new attempt is running, its step) from attempts.jsonl, progress.json and squeue."""
    started = len(runstate.read_attempts(run_dir)) > attempts_before
    prog = _progress(run_dir)
    running = started and prog.get("state") == "running" and _squeue_state(job) == "RUNNING"
    return running, int(prog.get("step") or 0)


def _signal(job: str) -> bool:
    """USR2 to every step of the job; False when the job ended in between (scancel: Invalid job id)."""
    return subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True, timeout=30,
                          check=False).returncode == 0


def _fire(run_dir: Path, job: str, kind: str, tmp: Path) -> str | None:
    step = _progress(run_dir).get("step")
    if kind == "usr2@ckpt":
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and not list((run_dir / "checkpoints").glob(".tmp-step-*")):
            time.sleep(0.002)
        hit = bool(list((run_dir / "checkpoints").glob(".tmp-step-*")))
        if not _signal(job):
            return None
        return f"USR2 {'while .tmp-step-* existed' if hit else 'just after the checkpoint window'} (step {step})"
    if kind == "preempt@urgent":
        node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, check=True).stdout.strip()
        cpus = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-w", node, "-c", cpus, "-o", str(tmp / "urgent.out"),
                                 "--wrap", "sleep 2"], capture_output=True, text=True, check=True).stdout.strip()
        return f"urgent job {urgent} took {node} at step {step}"
    return f"USR2 at step {step}" if _signal(job) else None


def _reference(run_dir: Path, tmp: Path, port: int) -> Path:
    """The same resolved config, uninterrupted, under torchrun (2 ranks, gloo, rendezvous on ``port``)."""
    rec = runstate.read_run_record(run_dir)
    assert rec is not None
    out = tmp / f"ref-{run_dir.name}"
    cfg = {**rec.config, "output_dir": str(out)}
    (tmp / f"{run_dir.name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "vit_train", "--config", str(tmp / f"{run_dir.name}.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out





@pytest.mark.slurm
@pytest.mark.slow
def test_seeded_preemptions_lose_nothing(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                         data_cache: Path) -> None:
    rng = random.Random(SEED)
    lrs = [1e-3, 2e-3]
    plans = {lr: _plan(rng) for lr in lrs}
    plans[lrs[0]] = sorted(plans[lrs[0]] + [("preempt@urgent", rng.randrange(3, STEPS - 3))], key=lambda p: p[1])
    print(f"reliability seed {SEED}; plans: {plans}")
    grid = _grid(tmp_path, "inj", synthetic_dataset, data_cache, lrs)
    jobs = submission.submit(grid, out=lambda _: None).job_ids
    by_lr = {s.lr: Path(s.run_dir) for s in grid_statuses(grid)}
    done: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT_S
    try:
        # Poll every run; fire its next planned injection once its current attempt runs at the target
        # step (for usr2@ckpt: one step before, then wait for .tmp-step-*). One injection per attempt.
        cursors, attempts = {lr: 0 for lr in lrs}, {lr: 0 for lr in lrs}
        while not all((d / "result.json").exists() for d in by_lr.values()):
            for lr, run_dir in by_lr.items():
                if cursors[lr] >= len(plans[lr]) or (run_dir / "result.json").exists():
                    continue
                kind, target = plans[lr][cursors[lr]]
                running, step = _ready(run_dir, jobs[run_dir.name], attempts[lr])
                if running and step >= target - (1 if kind == "usr2@ckpt" else 0):
                    what = _fire(run_dir, jobs[run_dir.name], kind, tmp_path)
                    if what is None:  # the attempt ended in between: try again on the next one
                        continue
                    attempts[lr] = len(runstate.read_attempts(run_dir))
                    done.append({"run": run_dir.name, "lr": lr, "kind": kind, "target": target, "what": what})
                    cursors[lr] += 1
            if time.monotonic() > deadline:
                pytest.fail(f"not finished in {WAIT_S:.0f} s: " + "; ".join(f"{s.name} {s.phase} {s.step} {s.failure}"
                                                                           for s in grid_statuses(grid)))
            time.sleep(0.1)
    finally:
        submission.cancel(grid, out=lambda _: None)
    missed = {lr: plans[lr][cursors[lr]:] for lr in lrs}
    print(f"fired {len(done)} injections; not reached before the run finished: {missed}")
    # Both uninterrupted references at once (each is its own torchrun): they share nothing but the cores.
    ports: set[int] = set()
    while len(ports) < len(by_lr):  # distinct ports: the two rendezvous must not meet
        ports.add(free_port())
    with ThreadPoolExecutor(max_workers=len(by_lr)) as pool:
        refs = dict(zip(by_lr, pool.map(lambda d, p: _reference(d, tmp_path, p), by_lr.values(), sorted(ports))))
    diffs = {}
    for lr, run_dir in by_lr.items():
        diffs[lr] = run_differs(refs[lr], run_dir)
        restarts = json.loads((run_dir / "result.json").read_text())["restarts"]
        print(f"{run_dir.name}: {restarts} restarts; {'equal to uninterrupted' if diffs[lr] is None else diffs[lr]}")
        reliability_report.record("run", case=f"inj/{run_dir.name}", lost=diffs[lr] is not None)
    for d in done:
        print(f"  {d['run']}: {d['kind']} target {d['target']}: {d['what']}")
        reliability_report.record("injection", suite="slurm", case=f"{d['kind']}@{d['target']}", seed=SEED,
                                  detail=f"{d['run']}: {d['what']}", survived=diffs[d["lr"]] is None)
    assert len(done) >= 10
    assert all(v is None for v in diffs.values()), diffs


# ---------------------------------------------------------------------------- Slurm: lost jobs
@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_and_node_failed_runs_show_and_resume(slurm_cluster: Any, tmp_path: Path, synthetic_dataset: Path,
                                                       data_cache: Path) -> None:
    """Two concurrent `submit` processes queue each run once; a finished run is never rerun; scancel shows as
    cancelled; a 2-node run whose node goes down shows its node failure; `resume` resubmits only what is
    unfinished and everything ends finished."""
    grid = _grid(tmp_path, "lost", synthetic_dataset, data_cache, [1e-3, 2e-3, 5e-3], tasks_per_node=1)
    cmd = [sys.executable, str(REPO / "submit.py"), "submit", str(grid), "--no-preflight-sbatch"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.count("-> job ") for o in outs) == [0, 3], outs
    sts = grid_statuses(grid)
    assert all(len(runstate.read_run_record(Path(s.run_dir)).submissions) == 1 for s in sts)  # type: ignore[union-attr]
    by_lr = {s.lr: s for s in sts}
    deadline = time.monotonic() + WAIT_S
    victim = by_lr[2e-3]
    while (_progress(Path(victim.run_dir)).get("step") or 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    subprocess.run(["scancel", victim.job_id or ""], check=True, timeout=30)
    while True:
        sts = {s.lr: s for s in grid_statuses(grid)}
        if sts[2e-3].phase == "cancelled" and sts[1e-3].phase == "finished" and sts[5e-3].phase == "finished":
            break
        assert time.monotonic() < deadline, [(s.lr, s.phase, s.failure) for s in sts.values()]
        time.sleep(1.0)
    assert sts[2e-3].failure.startswith("CANCELLED")
    lines: list[str] = []
    again = submission.resume(grid, preflight_sbatch=False, out=lines.append)
    assert list(again.job_ids) == [victim.name], lines  # finished runs never rerun
    assert sum(line.startswith("skip (finished)") for line in lines) == 2
    while not (Path(victim.run_dir) / "result.json").exists():
        assert time.monotonic() < deadline
        time.sleep(1.0)
    reliability_report.record("run", case="lost/cancelled-then-resumed", lost=False)
    for s in grid_statuses(grid):
        assert s.phase == "finished", s
        rec = runstate.read_run_record(Path(s.run_dir))
        assert [x.reason for x in rec.submissions] == (["submit", "resume"] if s.lr == 2e-3 else ["submit"])  # type: ignore[union-attr]

    # A 2-node run loses n2.
    node_grid = _grid(tmp_path, "nodefail", synthetic_dataset, data_cache, [1e-3], nodes=2, tasks_per_node=1)
    job = submission.submit(node_grid, preflight_sbatch=False, out=lambda _: None).job_ids.popitem()[1]
    run_dir = Path(grid_statuses(node_grid)[0].run_dir)
    try:
        while (_progress(run_dir).get("step") or 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=reliability-test"], check=True, timeout=30)
        seen = []
        while True:
            st = grid_statuses(node_grid)[0]
            acct = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State,Reason"], capture_output=True,
                                  text=True, timeout=30, check=False).stdout.split()
            seen.append((st.phase, st.slurm_state, st.failure))
            # sacct records NODE_FAIL at once; squeue says COMPLETING for a while, then (JobRequeue=1)
            # Slurm requeues the job itself: wait until status leaves "running".
            if any(a.startswith("NODE_FAIL") for a in acct) and st.phase != "running":
                break
            assert time.monotonic() < deadline, seen[-3:]
            time.sleep(1.0)
        print(f"after n2 down: status {seen[-1]}, sacct history {acct}; statuses seen {sorted(set(seen))}")
        # Slurm requeues a job whose node failed (JobRequeue=1), so the run is pending again; status
        # still names the failure of the attempt that was lost.
        assert st.phase in ("failed", "pending"), st
        assert "NODE_FAIL" in st.failure, st
    finally:
        subprocess.run(["scontrol", "update", "nodename=n2", "state=resume"], check=False, timeout=30)
    if st.phase == "failed":
        submission.resume(node_grid, failed_only=True, preflight_sbatch=False, out=lambda _: None)
    while not (run_dir / "result.json").exists():
        assert time.monotonic() < deadline, grid_statuses(node_grid)
        time.sleep(1.0)
    reliability_report.record("run", case="lost/node-failure-then-finished", lost=False)
    sinfo = subprocess.run(["sinfo", "-h", "-n", "n2", "-o", "%T"], capture_output=True, text=True, timeout=30,
                           check=False).stdout.strip()
    assert sinfo in ("idle", "mixed", "allocated"), sinfo
