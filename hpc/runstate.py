"""Run folder state on the login node: what was submitted, what Slurm says, and what phase a run is in.

Files in a run folder besides the trainer's own (config.json, progress.json, metrics.jsonl, result.json):

* ``run.json``: written by ``submit`` (atomically): identity of the run (signature, name, grid point, grid
  name, resolved config) and every submission ``{job_id, submitted_at, reason}``; job ids are the ids
  squeue/sacct print, ``12_3`` for array task 3 of job 12.
* ``attempts.jsonl``: one line appended by the job's rank 0 at every start (job id, SLURM_RESTART_COUNT,
  host, time). A requeue keeps the job id, so this file, not run.json, is what counts restarts.
* ``process.json`` and ``logs/``: the run's own process (pid, host, exit code) and output, written for a
  packed run (``slurm.runs_per_gpu`` > 1) and a local one (``submit --local``); see :mod:`hpc.procstate`.

Slurm's view comes from two sources merged by :func:`slurm_states`: ``squeue`` (slurmctld, always
current, keeps finished jobs only MinJobAge seconds) and ``sacct`` (slurmdbd: every job, but it lags:
a job submitted a second ago is not in it yet, so sacct alone would let a second submit queue a run
twice). The phase is a pure function, :func:`classify`, of the facts read here.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpc import procstate
from hpc.slurm_query import SlurmJobState, lookup
from vit_train.components.fsutil import atomic_write_text, make_private_dir

RUN_FILE, ATTEMPTS_FILE = "run.json", "attempts.jsonl"
RESULT_FILE, PROGRESS_FILE, CONFIG_FILE, METRICS_FILE = "result.json", "progress.json", "config.json", "metrics.jsonl"
SUBMITIT_DIR = ".submitit"
PHASES = ("finished", "running", "pending", "preempted", "failed", "cancelled", "not_submitted")
SETTLED = {"finished", "preempted", "failed", "cancelled", "not_submitted"}
REASONS = ("submit", "resume", "force")
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED"}
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "RESV_DEL_HOLD"}
# Reasons a pending job waits that resolve by themselves; any other (PartitionConfig, PartitionTimeLimit,
# QOS/association limits, ...) may never resolve, so status shows it in the failure column.
NORMAL_WAITS = {"", "None", "Priority", "Resources", "BeginTime", "JobArrayTaskLimit", "Dependency", "Prolog",
                "NodeDown", "ReqNodeNotAvail"}
# sacct needs a moment to learn of a new job (slurmdbd is fed asynchronously): within this many seconds
# of submission, "no record anywhere" means "queued", not "lost".
ACCOUNTING_GRACE_S = 120.0


# ---------------------------------------------------------------------------- run.json / attempts.jsonl
@dataclass(frozen=True)
class Submission:
    job_id: str
    """Slurm id as squeue prints it: "12" or "12_3" for an array task."""
    submitted_at: float
    """Unix time of the sbatch call."""
    reason: str
    """submit | resume | force."""
    packed_with: tuple[str, ...] = ()
    """Names of the runs sharing this run's array task (slurm.runs_per_gpu > 1) or local runner."""


@dataclass(frozen=True)
class RunRecord:
    """Contents of run.json."""

    signature: str
    name: str
    grid: str
    point: dict[str, Any]
    config: dict[str, Any]
    submissions: tuple[Submission, ...] = ()

    @property
    def last_job_id(self) -> str | None:
        return self.submissions[-1].job_id if self.submissions else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        subs = tuple(Submission(**{**s, "packed_with": tuple(s.get("packed_with", ()))}) for s in d.get("submissions", []))
        return cls(d["signature"], d["name"], d.get("grid", ""), dict(d.get("point", {})),
                   dict(d.get("config", {})), subs)


def read_run_record(run_dir: Path) -> RunRecord | None:
    data = _read_json(Path(run_dir) / RUN_FILE)
    try:
        return RunRecord.from_dict(data) if isinstance(data, Mapping) else None
    except (KeyError, TypeError):
        return None


def write_run_record(run_dir: Path, record: RunRecord) -> None:
    make_private_dir(Path(run_dir))
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(asdict(record), indent=1, default=str) + "\n")


def add_submission(run_dir: Path, record: RunRecord, job_id: str, reason: str, at: float | None = None,
                   packed_with: tuple[str, ...] = ()) -> RunRecord:
    """Append a submission to ``record`` and write run.json; returns the new record."""
    if reason not in REASONS:
        raise ValueError(f"reason={reason!r}: use one of {', '.join(REASONS)}")
    old = read_run_record(run_dir)
    earlier = old.submissions if old is not None and old.signature == record.signature else record.submissions
    new = RunRecord(record.signature, record.name, record.grid, record.point, record.config,
                    (*earlier, Submission(job_id, time.time() if at is None else at, reason, tuple(packed_with))))
    write_run_record(run_dir, new)
    return new


def record_attempt(run_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Append this start of the job to attempts.jsonl (called by rank 0 only)."""
    job_id = env.get("SLURM_JOB_ID", "")
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    job_id = env.get(procstate.JOB_ID_ENV) or job_id  # a packed or local run's process: its launcher's id
    entry = {
        "job_id": job_id,
        "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "host": env.get("SLURMD_NODENAME") or os.uname().nodename,
        "time": time.time(),
    }
    make_private_dir(Path(run_dir))
    # One write() of one line on an O_APPEND file: concurrent appends never interleave within a line.
    fd = os.open(Path(run_dir) / ATTEMPTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    return entry


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    return _read_jsonl(Path(run_dir) / ATTEMPTS_FILE)


# ---------------------------------------------------------------------------- the phase
def classify(*, finished: bool, submitted: bool, slurm_state: str | None, progress_state: str | None,
             seconds_since_submit: float | None = None) -> str:
    """The phase of a run from plain facts (pure, so every branch is unit-tested).

    finished: result.json says completed. submitted: run.json lists a submission. slurm_state: the
    latest job's state, None when neither squeue nor sacct knows the job. progress_state: progress.json's
    state (running | preempted | completed), None before the first log line.
    """
    if finished:
        return "finished"
    if not submitted:
        return "not_submitted"
    if slurm_state is None:
        if seconds_since_submit is not None and seconds_since_submit < ACCOUNTING_GRACE_S:
            return "pending"
        return "preempted" if progress_state == "preempted" else "failed"
    if slurm_state in RUNNING_STATES:
        return "running"
    if slurm_state in PENDING_STATES:
        return "pending"
    if slurm_state == "PREEMPTED":
        return "preempted"
    if slurm_state == "CANCELLED":
        return "cancelled"
    # COMPLETED without result.json, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...: a run that stopped at a
    # signal with a checkpoint but was not requeued (e.g. max_requeues reached) is "preempted", not broken.
    return "preempted" if progress_state == "preempted" else "failed"


@dataclass(frozen=True)
class RunStatus:
    """One row of ``submit.py status``."""

    name: str
    phase: str
    batch_size: int | None = None
    lr: float | None = None
    layout: str = ""
    """plugin and parallel layout, e.g. "hybrid_parallel tp2 pp2 zero1"."""
    job_id: str | None = None
    slurm_state: str | None = None
    restarts: int = 0
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    metric: str = ""
    """Last eval accuracy ("acc 0.8125"), else last train loss ("loss 0.5312")."""
    failure: str = ""
    """Why a failed/cancelled/preempted run stopped: Slurm state, exit code, reason, last error line."""
    failure_kind: str = ""
    """For a failed run, hpc.triage's kind: out_of_memory, collective_timeout, node_failure, ..."""
    retry: bool = False
    """For a failed run: would a plain resubmission likely succeed (``resume --failed`` takes only these)."""
    run_dir: str = ""


def layout_text(config: Mapping[str, Any]) -> str:
    p = config.get("parallel") or {}
    parts = [str(p.get("plugin", "?"))]
    parts += [f"{k}{p[f'{k}_size']}" for k in ("tp", "pp") if (p.get(f"{k}_size") or 1) > 1]
    if p.get("zero_stage"):
        parts.append(f"zero{p['zero_stage']}")
    if config.get("precision") and config.get("precision") != "fp32":
        parts.append(str(config["precision"]))
    return " ".join(parts)


def run_state(run_dir: str | Path, states: Mapping[str, SlurmJobState], now: float | None = None,
              config: Mapping[str, Any] | None = None) -> RunStatus:
    """Read one run folder and combine it with Slurm's states (from :func:`slurm_states`); ``config``
    (the expanded RunConfig dict) shows the hyper-parameters of a run that has no folder yet."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    result, progress = _read_json(run_dir / RESULT_FILE), _read_json(run_dir / PROGRESS_FILE)
    result = result if isinstance(result, Mapping) else {}
    progress = progress if isinstance(progress, Mapping) else {}
    saved = _read_json(run_dir / CONFIG_FILE)
    config = saved if isinstance(saved, Mapping) else (record.config if record else None) or config or {}
    job_id = record.last_job_id if record else None
    sj = lookup(states, job_id) if job_id else None
    # A local run (submit --local) has no Slurm job, and a packed run's own process can fail while its
    # task runs on: both are told by the run's process.json (hpc.procstate).
    sj = procstate.job_state(run_dir, job_id, sj, record.grid if record else "")
    if sj is not None and record is not None and sj.name and record.grid and sj.name != record.grid:
        # Job ids restart at 1 on a re-created cluster (and wrap at MaxJobId): this id is another job now.
        sj = None
    since = (now or time.time()) - record.submissions[-1].submitted_at if record and record.submissions else None
    phase = classify(finished=result.get("status") == "completed", submitted=job_id is not None,
                     slurm_state=sj.state if sj else None, progress_state=progress.get("state"),
                     seconds_since_submit=since)
    attempts = read_attempts(run_dir)
    optim = config.get("optim") or {}
    failure = (_failure(phase, sj, job_id, run_dir) if phase in ("cancelled", "preempted")
               else f"waiting: {sj.reason}" if phase == "pending" and sj is not None and sj.reason not in NORMAL_WAITS
               else "")
    if phase in ("pending", "running") and sj is not None and sj.previous:
        failure = "; ".join(x for x in (f"requeued by Slurm after {', '.join(sj.previous)}", failure) if x)
    triage = _triage(sj, job_id, run_dir) if phase == "failed" else None
    if triage is not None:
        # Unclassified: Slurm's state, reason and the log's last error line say the most.
        failure = _failure(phase, sj, job_id, run_dir) if triage.kind == "unknown" else f"{triage.kind}: {triage.detail}"
    total = progress.get("total_steps") or (config.get("resolved") or {}).get("total_steps")
    return RunStatus(
        name=record.name if record else run_dir.name,
        phase=phase,
        batch_size=optim.get("batch_size"),
        lr=optim.get("lr"),
        layout=layout_text(config) if config else "",
        job_id=job_id,
        slurm_state=sj.state if sj else None,
        restarts=max(len(attempts) - 1, 0),
        step=result.get("steps", progress.get("step")),
        total_steps=total,
        epoch=result.get("epochs", progress.get("epoch")),
        metric=_metric(result, run_dir, progress),
        failure=failure,
        failure_kind=triage.kind if triage else "",
        retry=triage.retry if triage else False,
        run_dir=str(run_dir),
    )


def _metric(result: Mapping[str, Any], run_dir: Path, progress: Mapping[str, Any]) -> str:
    if result.get("eval_accuracy") is not None:
        return f"acc {result['eval_accuracy']:.4f}"
    evals = [r for r in _read_jsonl(run_dir / METRICS_FILE) if r.get("kind") == "eval" and "accuracy" in r]
    if evals:
        return f"acc {evals[-1]['accuracy']:.4f}"
    return f"loss {progress['loss']:.4f}" if isinstance(progress.get("loss"), (int, float)) else ""


def stderr_path(run_dir: Path, job_id: str) -> Path:
    """submitit's stderr log of task 0 for this job: <grid_dir>/.submitit/<id>/<id>_0_log.err; or the run's
    own process log (<run>/logs/<id>.err) for a packed or local run."""
    own = procstate.own_stderr(run_dir, job_id)
    if own is not None:
        return own
    return Path(run_dir).parent / SUBMITIT_DIR / job_id / f"{job_id}_0_log.err"


def _triage(sj: SlurmJobState | None, job_id: str | None, run_dir: Path) -> Any:
    """Classify a failed run from Slurm's record and the tail of task 0's stderr (hpc.triage)."""
    from hpc.triage import classify_failure

    tail = ""
    if job_id:
        try:
            with open(stderr_path(run_dir, job_id), "rb") as f:
                f.seek(0, 2)
                f.seek(max(f.tell() - 64_000, 0))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            pass
    return classify_failure(sj.state if sj else None, sj.exit_code if sj else None, sj.reason if sj else None, tail)


def _failure(phase: str, sj: SlurmJobState | None, job_id: str | None, run_dir: Path) -> str:
    if sj is None:
        parts = [f"no Slurm record of job {job_id} (sacct unavailable, job purged, or its id reused by another job)"]
    else:
        parts = [sj.state + (f" exit {sj.exit_code}" if sj.exit_code not in ("", "0:0") else "")]
        if sj.reason and sj.reason != "None":
            parts.append(sj.reason)
    line = last_error_line(stderr_path(run_dir, job_id)) if job_id else None
    if line and phase == "failed":
        parts.append(line)
    return "; ".join(parts)


# In order of preference: a Python exception line (what went wrong), then Slurm's own messages (killed,
# time limit, OOM), then any "error:" line (srun's "task 0: Exited with exit code 1" says little).
_ERROR_RES = [
    re.compile(r"^([\w.]+(Error|Exception|Interrupt|Exit)|[\w.]+\.\w*Error)\b"),
    re.compile(r"CANCELLED|DUE TO TIME LIMIT|oom-kill|Out Of Memory|Killed", re.IGNORECASE),
    re.compile(r"error:", re.IGNORECASE),
]


def last_error_line(path: Path, max_bytes: int = 64_000, max_len: int = 200) -> str | None:
    """The most telling error line near the end of a log (else its last line), shortened for a table."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    if not lines:
        return None
    hit = next((ln for rx in _ERROR_RES for ln in reversed(lines) if rx.search(ln)), lines[-1])
    return hit if len(hit) <= max_len else hit[: max_len - 3] + "..."


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(rec, dict):
            out.append(rec)
    return out
