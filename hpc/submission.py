"""Submit a grid to Slurm as one submitit job array; also resume and cancel it.

Flow of :func:`submit`: load the grid and its site profile, run the preflight (nothing is written
before it passes), take the grid folder's lock, read every run's state, then submit in ONE array the
runs that are neither finished nor in flight, and record each job id in the run's run.json.

* Idempotent: a finished run (result.json says completed) or one pending/running in Slurm is skipped,
  so submitting a grid twice, even from two shells at once (the lock serialises them, and squeue sees
  a job the moment sbatch returns), queues each run once.
* ``force`` starts runs over: an in-flight job of the run is cancelled first (two jobs must never
  write one run folder), and previous outputs move to ``<run>/previous/<time>/`` (kept, not deleted).
* The sbatch script is submitit's own (``_make_sbatch_string``), so ``--dry-run`` prints exactly
  what would be submitted, without calling sbatch or creating a file.
"""

from __future__ import annotations

import fcntl
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from hpc import packing, preflight, procstate, runstate, slurm_query
from hpc.site_profile import SiteProfile, executor_parameters
from hpc.grid import GridSpec, RunSpec, expand, load_grid
from vit_train.components.fsutil import atomic_write_text, make_private_dir

GRID_COPY, LOCK_FILE, PREVIOUS_DIR = "grid.yaml", ".lock", "previous"
IN_FLIGHT = ("running", "pending")
RESUME_PHASES = ("failed", "cancelled", "preempted", "not_submitted")
Out = Callable[[str], None]


def submitit_folder(spec: GridSpec) -> Path:
    return spec.grid_dir / runstate.SUBMITIT_DIR / "%j"


def python_command(folder: Path, python: str | None = None) -> str:
    """The command submitit puts after srun (SlurmExecutor._submitit_command_str)."""
    return " ".join([python or shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(spec: GridSpec, profile: SiteProfile, num_runs: int) -> str:
    """The sbatch script submitit writes for an array of ``num_runs`` runs of this grid (no I/O): one task
    per run, or per ``slurm.runs_per_gpu`` runs packed on one GPU."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = submitit_folder(spec).absolute()
    num_tasks = packing.num_tasks(num_runs, spec.slurm.runs_per_gpu)
    # submitit submits a single job, not an array of one, when the batch holds one submission.
    map_count = num_tasks if num_tasks > 1 else None
    return _make_sbatch_string(command=python_command(folder), folder=folder, map_count=map_count,
                               **executor_parameters(spec, profile))


def build_executor(spec: GridSpec, profile: SiteProfile) -> Any:
    import submitit

    # max_num_timeout = max_requeues: with time limits under ~12 min submitit counts every USR2
    # (preemption included) as a time-out, and stops requeueing after max_num_timeout of them.
    ex = submitit.SlurmExecutor(folder=submitit_folder(spec), max_num_timeout=spec.slurm.max_requeues)
    ex.update_parameters(**executor_parameters(spec, profile))
    return ex


# ---------------------------------------------------------------------------- what to do with each run
@dataclass(frozen=True)
class Decision:
    run: RunSpec
    status: runstate.RunStatus
    submit: bool
    why: str
    """Printed after the run name: "submit", "skip (finished)", "skip (running as job 12_3: RUNNING)"."""


def read_statuses(run_dirs: Sequence[Path], configs: Sequence[dict[str, Any] | None] | None = None) -> list[runstate.RunStatus]:
    """Every run's status with ONE squeue and ONE sacct call for the whole grid."""
    records = [runstate.read_run_record(d) for d in run_dirs]
    # Local runs (submit --local) are not Slurm's: one unknown id would fail the whole squeue call.
    states = slurm_query.slurm_states([r.last_job_id for r in records
                                       if r and r.last_job_id and not procstate.is_local(r.last_job_id)])
    cfgs = list(configs) if configs is not None else [None] * len(run_dirs)
    return [runstate.run_state(d, states, config=c) for d, c in zip(run_dirs, cfgs)]


def plan(runs: Sequence[RunSpec], *, force: bool = False, phases: Sequence[str] | None = None,
         retryable_only: bool = False) -> list[Decision]:
    """Decide per run; ``phases`` (resume --failed) narrows what is resubmitted, and ``retryable_only``
    skips failures that a plain resubmission would repeat (out of memory, a Python exception)."""
    out = []
    for run, st in zip(runs, read_statuses([r.run_dir for r in runs], [r.config.to_dict() for r in runs])):
        if force:
            out.append(Decision(run, st, True, "submit (force)"))
        elif st.phase == "finished":
            out.append(Decision(run, st, False, "skip (finished)"))
        elif st.phase in IN_FLIGHT:
            out.append(Decision(run, st, False, f"skip (running as job {st.job_id}: {st.slurm_state or 'just submitted'})"))
        elif phases is not None and st.phase not in phases:
            out.append(Decision(run, st, False, f"skip ({st.phase})"))
        elif retryable_only and st.phase == "failed" and not st.retry:
            out.append(Decision(run, st, False, f"skip (failed, not worth retrying as is: {st.failure})"))
        else:
            out.append(Decision(run, st, True, "submit" if st.phase == "not_submitted" else f"submit ({st.phase})"))
    return out


@contextmanager
def grid_lock(grid_dir: Path, timeout_s: float = 600, out: Out = print) -> Iterator[None]:
    """Exclusive lock of a grid folder, so concurrent submits see each other's jobs (flock: works on
    local disks and on NFS, where Linux maps it to a POSIX lock)."""
    make_private_dir(grid_dir)
    with open(grid_dir / LOCK_FILE, "a") as fh:
        deadline, told = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    out(f"waiting for another submit/resume/cancel of {grid_dir} to finish ...")
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{grid_dir / LOCK_FILE} is held by another process for {timeout_s:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_grid(spec: GridSpec) -> None:
    """Keep the grid file in its folder, so `status`/`report` work from the folder alone."""
    src = Path(spec.source)
    header = f"# Copy of {src} made by `submit.py` at {time.strftime('%Y-%m-%d %H:%M:%S')}; relative paths below\n" \
             f"# are relative to {src.parent}, not to this copy.\n"
    atomic_write_text(spec.grid_dir / GRID_COPY, header + src.read_text())


def _record(run: RunSpec, spec: GridSpec) -> runstate.RunRecord:
    return runstate.RunRecord(run.signature, run.name, spec.name, dict(run.point), run.config.to_dict())


# ---------------------------------------------------------------------------- the commands
@dataclass(frozen=True)
class Outcome:
    decisions: list[Decision]
    job_ids: dict[str, str]
    """Run name -> job id of what was submitted now."""
    sbatch: str | None = None
    """The rendered script (dry run only)."""


def submit(grid: str | Path, *, dry_run: bool = False, force: bool = False, preflight_sbatch: bool = True,
           offline: bool = False, reason: str = "submit", phases: Sequence[str] | None = None,
           retryable_only: bool = False, out: Out = print) -> Outcome:
    """Preflight, then submit every run that needs it as one job array (see module docstring)."""
    if dry_run:
        return _dry_run(grid, force=force, preflight_sbatch=preflight_sbatch, offline=offline, phases=phases,
                        retryable_only=retryable_only, out=out)
    spec, profile, runs = preflight.check_file(grid, sbatch=preflight_sbatch, offline=offline, out=out)
    with grid_lock(spec.grid_dir, out=out):
        _copy_grid(spec)
        decisions = plan(runs, force=force, phases=phases, retryable_only=retryable_only)
        chosen = [d for d in decisions if d.submit]
        if force:
            _start_over(chosen, out)
        groups = task_groups(spec, [d.run for d in chosen])
        job_ids, packed = _submit_array(spec, profile, groups), packing.neighbours(groups)
        for d in decisions:
            if d.submit:
                runstate.add_submission(d.run.run_dir, _record(d.run, spec), job_ids[d.run.name],
                                        "force" if force else reason, packed_with=packed.get(d.run.name, ()))
                out(f"{d.why}  {d.run.name}  -> job {job_ids[d.run.name]}")
            else:
                out(f"{d.why}  {d.run.name}")
        out(f"{len(chosen)} of {len(runs)} runs submitted" + (f"; logs in {spec.grid_dir / runstate.SUBMITIT_DIR}" if chosen else ""))
        return Outcome(decisions, job_ids)


def _dry_run(grid: str | Path, *, force: bool, preflight_sbatch: bool, offline: bool, phases: Sequence[str] | None,
             retryable_only: bool, out: Out) -> Outcome:
    """Print every resolved run and the sbatch script, then raise the preflight's problems if it found any
    (the command exits non-zero): what a grid would submit is worth seeing before it is ready, e.g.
    before `prefetch`. Only a grid file or profile that does not load leaves nothing to print."""
    problems: preflight.PreflightError | None = None
    try:
        spec, profile, runs = preflight.check_file(grid, sbatch=preflight_sbatch, offline=offline, out=out)
    except preflight.PreflightError as e:
        if e.runs is None:
            raise
        spec = load_grid(grid)  # both loaded a moment ago: the problems are in the runs or the cluster
        profile, runs, problems = preflight.load_profile(spec.profile), e.runs, e
    decisions = plan(runs, force=force, phases=phases, retryable_only=retryable_only)
    for d in decisions:
        out(f"{d.run.name}  {d.why}\n    signature {d.run.signature}  point {d.run.point}")
    num_chosen = sum(d.submit for d in decisions)
    script = render_sbatch(spec, profile, max(num_chosen, 1))
    ready = "" if problems is None else f", once the {len(problems.failures)} preflight problem(s) after the script are fixed"
    out(f"\n# dry run: {num_chosen} of {len(runs)} runs would be submitted with profile {profile.name!r} "
        f"({profile.description}){ready}; sbatch script:\n{script}")
    if problems is not None:
        raise problems
    return Outcome(decisions, {}, script)


def resume(grid: str | Path, *, failed_only: bool = False, preflight_sbatch: bool = True, offline: bool = False,
           out: Out = print) -> Outcome:
    """Resubmit runs that stopped unfinished (failed, cancelled, preempted and not requeued, never
    submitted); they continue from their newest complete checkpoint. Never finished or in-flight runs."""
    phases = ("failed",) if failed_only else RESUME_PHASES
    return submit(grid, reason="resume", phases=phases, retryable_only=failed_only, preflight_sbatch=preflight_sbatch,
                  offline=offline, out=out)


def cancel(grid: str | Path, *, out: Out = print) -> list[str]:
    """scancel the in-flight jobs of the grid's runs (one call); returns the cancelled job ids."""
    spec = load_grid(grid)
    runs = expand(spec)
    if not spec.grid_dir.exists():
        out(f"nothing to cancel: {spec.grid_dir} does not exist (grid never submitted)")
        return []
    with grid_lock(spec.grid_dir, out=out):
        statuses = read_statuses([r.run_dir for r in runs])
        ids = list(dict.fromkeys(st.job_id for st in statuses if st.phase in IN_FLIGHT and st.job_id))  # packed: shared
        for st in statuses:
            out(f"cancel {st.name} (job {st.job_id}: {st.slurm_state})" if st.phase in IN_FLIGHT and st.job_id
                else f"skip ({st.phase})  {st.name}")
        signalled: set[int] = set()  # local runs: SIGTERM to their processes, which stop with a checkpoint
        for st in statuses:
            if st.phase in IN_FLIGHT and procstate.is_local(st.job_id):
                procstate.stop_local(Path(st.run_dir), st.job_id or "", signalled)
        if [i for i in ids if not procstate.is_local(i)]:
            _scancel([i for i in ids if not procstate.is_local(i)])
        return ids


def _scancel(job_ids: Sequence[str]) -> None:
    proc = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scancel {' '.join(job_ids)} failed: {proc.stderr.strip()}")


def _start_over(decisions: Sequence[Decision], out: Out, timeout_s: float = 120) -> None:
    """force: cancel the run's in-flight job and wait until it is gone, then set old outputs aside."""
    live = [d.status.job_id for d in decisions if d.status.phase in IN_FLIGHT and d.status.job_id]
    if live:
        out(f"force: cancelling in-flight jobs {' '.join(live)}")
        _scancel(live)
        deadline = time.monotonic() + timeout_s
        while any(s.state in runstate.RUNNING_STATES | runstate.PENDING_STATES
                  for s in slurm_query.squeue_states(live).values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs {live} still in the queue {timeout_s:.0f} s after scancel")
            time.sleep(0.5)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for d in decisions:
        keep = {runstate.RUN_FILE, PREVIOUS_DIR}
        old = [p for p in d.run.run_dir.iterdir() if p.name not in keep] if d.run.run_dir.is_dir() else []
        if old:
            dest = make_private_dir(d.run.run_dir / PREVIOUS_DIR / stamp)
            for p in old:
                shutil.move(str(p), dest / p.name)
            out(f"force: moved previous outputs of {d.run.name} to {dest}")


def task_groups(spec: GridSpec, runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """The runs of each array task: one each, or ``slurm.runs_per_gpu`` packed on one GPU (hpc.packing)."""
    return packing.pack(runs, spec.slurm.runs_per_gpu) if spec.slurm.runs_per_gpu > 1 else [[r] for r in runs]


def _submit_array(spec: GridSpec, profile: SiteProfile, groups: Sequence[Sequence[RunSpec]]) -> dict[str, str]:
    """One array task per group; returns run name -> the id of the task that runs it."""
    if not groups:
        return {}
    from hpc.job import TrainJob
    from hpc.packed import PackedJob

    def job(group: Sequence[RunSpec]) -> Any:
        jobs = [TrainJob(run.config.to_dict(), str(run.run_dir)) for run in group]
        return jobs[0] if len(jobs) == 1 else PackedJob(jobs)

    ex = build_executor(spec, profile)
    with ex.batch():
        submitted = [ex.submit(job(g)) for g in groups]
    return {run.name: str(s.job_id) for g, s in zip(groups, submitted) for run in g}
