"""The state of a run's own process, recorded in its folder: for runs that Slurm does not see one by one.

Two launchers start a run as a process of its own, not as a Slurm task: a packed array task
(``slurm.runs_per_gpu`` > 1, :mod:`hpc.packed`), which runs several grid points at once, and the local
executor (``submit --local``, :mod:`hpc.local`), which needs no Slurm at all. Both write
``<run>/process.json`` when the run is queued, started and reaped, and send the process's output to
``<run>/logs/<job_id>.out|.err``:

* a local run's state comes from this record alone: pid alive on this host -> RUNNING; exit 0 ->
  COMPLETED; exit 3 (stopped at a step boundary with a checkpoint, by SIGTERM or Ctrl-C) -> CANCELLED;
  other exits and signals -> FAILED; never started and its runner gone -> CANCELLED. ``sbatch``,
  ``squeue`` and ``sacct`` are never needed.
* a packed run's state is its Slurm task's, except that a run whose own process failed is FAILED while
  its neighbours still run (Slurm would say RUNNING for all of them).

The states are spelled as Slurm's (:class:`~hpc.slurm_query.SlurmJobState`), so :mod:`hpc.runstate`
classifies, triages and prints them like any job's. A pid is identified by pid and start time
(``/proc/<pid>/stat``), so a reused pid is not taken for the run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hpc.slurm_query import SlurmJobState
from vit_train.components.fsutil import atomic_write_text, make_private_dir

PROCESS_FILE, LOG_DIR = "process.json", "logs"
LOCAL_PREFIX = "local-"
JOB_ID_ENV = "VIT_SUBMIT_JOB_ID"
"""Set in a run's process: the job id attempts.jsonl records (a packed task's id, or a local id)."""
EXIT_OK, EXIT_STOPPED = 0, 3


def is_local(job_id: str | None) -> bool:
    return bool(job_id) and str(job_id).startswith(LOCAL_PREFIX)


def hostname() -> str:
    return os.uname().nodename


def log_paths(run_dir: Path, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) of the run's process for this job."""
    d = Path(run_dir) / LOG_DIR
    return d / f"{job_id}.out", d / f"{job_id}.err"


def own_stderr(run_dir: Path, job_id: str) -> Path | None:
    err = log_paths(run_dir, job_id)[1]
    return err if err.is_file() else None


def pid_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rpartition(")")[2].split()[19])  # fields after "(comm)" start at field 3


def is_alive(host: str, pid: int | None, start: int | None) -> bool | None:
    """True/False for a process of this host; None when it lives on another host (not checkable here)."""
    if pid is None:
        return False
    if host != hostname():
        return None
    now = pid_start(pid)
    return now is not None and (start is None or now == start)


@dataclass(frozen=True)
class ProcessRecord:
    """Contents of process.json."""

    job_id: str
    host: str
    runner_pid: int
    """The launcher (packed task or local runner) that owns this run's process."""
    runner_start: int | None
    queued_at: float
    pid: int | None = None
    """The run's own process; None while it waits for a free slot."""
    pid_start: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    """Popen's return code: negative = killed by that signal."""
    device: str = ""
    """CUDA_VISIBLE_DEVICES of the process ("" = CPU, or inherited from the Slurm task)."""


def read_record(run_dir: Path) -> ProcessRecord | None:
    try:
        data = json.loads((Path(run_dir) / PROCESS_FILE).read_text())
        return ProcessRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(run_dir: Path, rec: ProcessRecord) -> ProcessRecord:
    make_private_dir(Path(run_dir))
    atomic_write_text(Path(run_dir) / PROCESS_FILE, json.dumps(asdict(rec), indent=1) + "\n")
    return rec


def queued(run_dir: Path, job_id: str) -> ProcessRecord:
    me = os.getpid()
    return write_record(run_dir, ProcessRecord(job_id, hostname(), me, pid_start(me), time.time()))


def started(run_dir: Path, rec: ProcessRecord, pid: int, device: str) -> ProcessRecord:
    return write_record(run_dir, replace(rec, pid=pid, pid_start=pid_start(pid), started_at=time.time(), device=device))


def ended(run_dir: Path, job_id: str, exit_code: int) -> None:
    """Record the exit of this job's process (the launcher on reaping it; the process itself just before)."""
    rec = read_record(run_dir)
    if rec is not None and rec.job_id == job_id and rec.exit_code is None:
        write_record(run_dir, replace(rec, ended_at=time.time(), exit_code=exit_code))


def failed_in(run_dir: Path, job_id: str) -> bool:
    """The run's process failed (not stopped) in an earlier attempt of this same job: a requeued packed
    task leaves it to ``resume``, as Slurm leaves a failed job."""
    rec = read_record(run_dir)
    return rec is not None and rec.job_id == job_id and rec.exit_code not in (None, EXIT_OK, EXIT_STOPPED)


def exit_text(code: int) -> tuple[str, str]:
    """(Slurm-style "exit:signal", words) for a Popen return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"0:{-code}", f"killed by {name}"
    return f"{code}:0", f"exit code {code}"


# ---------------------------------------------------------------------------- the state
def local_state(rec: ProcessRecord | None, job_id: str, grid: str, alive: Any = is_alive) -> SlurmJobState:
    """A local run's job state from its record (pure but for ``alive``)."""
    def st(state: str, reason: str = "", code: str = "") -> SlurmJobState:
        return SlurmJobState(job_id, state, code, reason, "", grid)

    if rec is None or rec.job_id != job_id:
        return st("FAILED", f"no {PROCESS_FILE} for local job {job_id}")
    where = f"on {rec.host}" if rec.host != hostname() else ""
    if rec.exit_code is not None and rec.pid is None:
        return st("CANCELLED", "the local runner stopped before starting it")
    if rec.exit_code is not None:
        code, words = exit_text(rec.exit_code)
        if rec.exit_code == EXIT_OK:
            return st("COMPLETED", "", code)
        if rec.exit_code == EXIT_STOPPED:
            return st("CANCELLED", "stopped at a step boundary with a checkpoint (SIGTERM or Ctrl-C)", code)
        return st("FAILED", words, code)
    if rec.pid is None:
        runner = alive(rec.host, rec.runner_pid, rec.runner_start)
        if runner is False:
            return st("CANCELLED", "the local runner stopped before starting it")
        return st("PENDING", "Resources")  # waiting for a free GPU/CPU slot of its runner
    running = alive(rec.host, rec.pid, rec.pid_start)
    if running is False:
        return st("FAILED", f"process {rec.pid} ended without an exit record (its runner was killed?)")
    return st("RUNNING", where)


def job_state(run_dir: Path, job_id: str | None, slurm: SlurmJobState | None, grid: str) -> SlurmJobState | None:
    """The state :mod:`hpc.runstate` should use for the run's latest job: from process.json for a local
    job and for a packed run whose own process failed; else Slurm's (``slurm``, unchanged)."""
    if not job_id:
        return slurm
    rec = read_record(run_dir)
    if is_local(job_id):
        return local_state(rec, job_id, grid)
    if rec is None or rec.job_id != job_id or rec.exit_code in (None, EXIT_OK, EXIT_STOPPED):
        return slurm
    code, words = exit_text(rec.exit_code)
    return SlurmJobState(job_id, "FAILED", code, f"packed run's process: {words}", slurm.elapsed if slurm else "",
                         grid, slurm.previous if slurm else ())


def stop_local(run_dir: Path, job_id: str, done: set[int], sig: int = signal.SIGTERM) -> bool:
    """Signal a local run's process (``cancel``), or its runner while it waits for a slot (the runner
    then stops all its runs); each pid at most once (``done``). The run stops at a step boundary
    with a checkpoint."""
    rec = read_record(run_dir)
    if rec is None or rec.job_id != job_id or rec.exit_code is not None:
        return False
    pid, start = (rec.pid, rec.pid_start) if rec.pid is not None else (rec.runner_pid, rec.runner_start)
    if pid in done:
        return True
    if not is_alive(rec.host, pid, start):
        return False
    try:
        os.kill(pid, sig)
    except OSError:
        return False
    done.add(pid)
    return True
