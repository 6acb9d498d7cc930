"""``submit GRID --local`` and ``resume GRID --local``: run a grid on this machine, without Slurm.

For a workstation, or an interactive allocation inside Slurm (``salloc``, then this on the node). Same
preflight (without the Slurm part), same run folders, run.json, status, report, TensorBoard and
resume as a submitted grid; ``sbatch``, ``squeue`` and ``sacct`` need not exist.

* Slots: every GPU this process sees (``CUDA_VISIBLE_DEVICES`` when set, as in an allocation; else
  ``nvidia-smi -L``) times ``slurm.runs_per_gpu``; on a CPU grid (``gpus_per_node: 0``),
  ``runs_per_gpu`` CPU processes. This process's CPUs are split between the slots. Runs are one
  process each (:mod:`hpc.procpool`): a run of several ranks or nodes is refused (submit it to Slurm).
* The GPU memory check of ``runs_per_gpu`` uses the memory of the GPUs seen here (nvidia-smi), not
  the profile's ``gpu_mem_gb``. The profile's ``env:`` variables are exported to the runs (its
  ``setup:`` lines are not run: start this from the environment they would set up).
* It blocks until the grid is done, printing one line per run start and end, then the results table
  (as ``report``). Ctrl-C or SIGTERM stops every run at a step boundary with a checkpoint (runs not
  started yet stay unstarted); ``resume --local`` continues them. Ctrl-C three times kills them.
* State lives in each run's process.json (:mod:`hpc.procstate`): pid, host, exit code; a run is
  "pending" until a slot is free, and ``cancel`` sends its process SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpc import preflight, procpool, procstate, report, runstate, submission
from hpc.grid import GridSpec
from hpc.site_profile import SiteProfile
from vit_train.config import ConfigError

Out = Callable[[str], None]
KILL_AFTER_INTERRUPTS = 3


class LocalError(ConfigError):
    """The grid cannot run on this machine as it is; the message says why and what to change."""


def visible_gpus(env: Any = os.environ) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set (an empty value means none), else
    the GPUs nvidia-smi lists; [] on a machine without NVIDIA GPUs."""
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [g.strip() for g in cvd.split(",") if g.strip() and g.strip() != "-1"]
    out = _nvidia_smi(["-L"])
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def gpu_memory_gb() -> float | None:
    """Memory of the smallest GPU nvidia-smi lists, in GiB; None without nvidia-smi."""
    out = _nvidia_smi(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
    sizes = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]
    return min(sizes) / 1024 if sizes else None


def _nvidia_smi(args: list[str]) -> str:
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def slots_for(spec: GridSpec, gpus: Sequence[str], cpus: Sequence[int]) -> list[procpool.Slot]:
    """runs_per_gpu slots per GPU (or runs_per_gpu CPU slots), this process's CPUs split between them."""
    r = spec.slurm
    if r.world_size > 1:
        raise LocalError(f"{spec.source}: --local runs one-process runs, but these need {r.world_size} ranks "
                         f"(slurm.nodes={r.nodes}, tasks_per_node={r.tasks_per_node}); submit the grid to Slurm, "
                         "or use nodes: 1 and one GPU (or one CPU task) per run")
    if r.gpus_per_node and not gpus:
        raise LocalError(f"{spec.source}: slurm.gpus_per_node={r.gpus_per_node} but no GPU is visible here "
                         "(CUDA_VISIBLE_DEVICES, nvidia-smi); run on a GPU machine, or set gpus_per_node: 0 and "
                         "tasks_per_node: 1 to train on CPU")
    devices = [g for g in gpus for _ in range(r.runs_per_gpu)] if r.gpus_per_node else [""] * r.runs_per_gpu
    return [procpool.Slot(d, share) for d, share in zip(devices, procpool.split_cpus(cpus, len(devices)))]


def profile_env(profile: SiteProfile, base: Any = os.environ) -> dict[str, str]:
    """The environment with the profile's ``env:`` exported as the job's shell would (``$VARS`` and
    ``${VAR:+...}`` expanded by bash)."""
    exports = profile.setup_lines()[: len(profile.env)]
    if not exports:
        return dict(base)
    try:
        proc = subprocess.run(["bash", "-c", "\n".join([*exports, "env -0"])], env=dict(base), capture_output=True,
                              timeout=30, check=True)
        return dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
    except (OSError, subprocess.SubprocessError):
        return {**base, **{k: os.path.expandvars(v) for k, v in profile.env.items()}}


# ---------------------------------------------------------------------------- the command
def run(grid: str | Path, *, force: bool = False, dry_run: bool = False, offline: bool = False, reason: str = "submit",
        phases: Sequence[str] | None = None, retryable_only: bool = False, out: Out = print) -> int:
    """Preflight, then train the runs that need it on this machine; 0 when every run of the grid finished."""
    gpus = visible_gpus()
    spec, profile, runs = preflight.check_file(grid, sbatch=False, offline=offline,
                                               gpu_mem_gb=gpu_memory_gb() if gpus else None, out=out)
    slots = slots_for(spec, gpus, procpool.available_cpus())
    if dry_run:
        for d in submission.plan(runs, force=force, phases=phases, retryable_only=retryable_only):
            out(f"{d.run.name}  {d.why}\n    signature {d.run.signature}  point {d.run.point}")
        out(f"\n# dry run: would run locally on {len(slots)} slot(s): " + "; ".join(s.label for s in slots))
        return 0
    items = _queue(spec, runs, force=force, reason=reason, phases=phases, retryable_only=retryable_only, out=out)
    if items:
        out(f"running {len(items)} run(s) here on {len(slots)} slot(s): " + "; ".join(s.label for s in slots) +
            "; Ctrl-C stops them all with a checkpoint (resume --local continues)")
        _run_items(spec, profile, items, slots, out)
    statuses = submission.read_statuses([r.run_dir for r in runs], [r.config.to_dict() for r in runs])
    rows = [report.read_row(r.run_dir, r.config.to_dict()) for r in runs]
    out(report.format_text(rows, title=spec.name).rstrip("\n"))
    unfinished = [s for s in statuses if s.phase != "finished"]
    counts = ", ".join(f"{n} {p}" for p in runstate.PHASES if (n := sum(s.phase == p for s in statuses)))
    out(f"{len(runs) - len(unfinished)} of {len(runs)} runs finished ({counts})" +
        (f"; `python submit.py status {grid}` says why, `resume {grid} --local` continues" if unfinished else ""))
    return 0 if not unfinished else 1


def resume(grid: str | Path, *, failed_only: bool = False, offline: bool = False, out: Out = print) -> int:
    """``resume --local``: the unfinished runs (as :func:`hpc.submission.resume` picks them), trained here."""
    return run(grid, reason="resume", phases=("failed",) if failed_only else submission.RESUME_PHASES,
               retryable_only=failed_only, offline=offline, out=out)


def _queue(spec: GridSpec, runs: Sequence[Any], *, force: bool, reason: str, phases: Sequence[str] | None,
           retryable_only: bool, out: Out) -> list[procpool.Item]:
    """Under the grid lock: decide, record each chosen run's submission and queued process, like submit."""
    from hpc import job as hjob  # looked up at call time, so a test may replace TrainJob

    with submission.grid_lock(spec.grid_dir, out=out):
        submission._copy_grid(spec)
        decisions = submission.plan(runs, force=force, phases=phases, retryable_only=retryable_only)
        chosen = [d for d in decisions if d.submit]
        live = [d.run.name for d in chosen if d.status.phase in submission.IN_FLIGHT]
        if live:
            raise LocalError(f"--force: {', '.join(live)} still in flight; `python submit.py cancel {spec.source}` first")
        if force:
            submission._start_over(chosen, out)
        items = []
        for i, d in enumerate(chosen):
            job_id = f"{procstate.LOCAL_PREFIX}{os.getpid()}_{i}"
            runstate.add_submission(d.run.run_dir, submission._record(d.run, spec), job_id, "force" if force else reason)
            procstate.queued(d.run.run_dir, job_id)
            items.append(procpool.Item(d.run.name, d.run.run_dir, hjob.TrainJob(d.run.config.to_dict(), str(d.run.run_dir)),
                                       job_id))
            out(f"{d.why}  {d.run.name}  -> {job_id}")
        for d in decisions:
            if not d.submit:
                out(f"{d.why}  {d.run.name}")
        return items


def _run_items(spec: GridSpec, profile: SiteProfile, items: list[procpool.Item], slots: list[procpool.Slot],
               out: Out) -> None:
    stop: dict[str, Any] = {"sig": None, "interrupts": 0}

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            stop["interrupts"] += 1
        if stop["interrupts"] >= KILL_AFTER_INTERRUPTS:
            stop["sig"] = signal.SIGKILL
            out("interrupted again: killing the runs (each resumes from its newest periodic checkpoint)")
        elif stop["sig"] is None:
            stop["sig"] = signal.SIGTERM
            out(f"{signal.Signals(signum).name}: stopping every run at its next step boundary with a checkpoint "
                f"(Ctrl-C {KILL_AFTER_INTERRUPTS - stop['interrupts']} more time(s) kills them)")

    done = {"n": 0}

    def on_event(item: procpool.Item, what: str, code: int | None, slot: procpool.Slot) -> None:
        stamp = time.strftime("%H:%M:%S")
        if what == "started":
            out(f"[{stamp}] running   {item.name} on {slot.label} (pid {pool.pids.get(item.name)}; log "
                f"{procstate.log_paths(item.run_dir, item.job_id)[1]})")
            return
        done["n"] += 1
        st = runstate.run_state(item.run_dir, {})
        detail = st.metric if st.phase == "finished" else st.failure
        out(f"[{stamp}] {st.phase:<9} {item.name}{'  ' + detail if detail else ''}  ({done['n']}/{len(items)} done)")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        pool = procpool.Pool(items, slots, profile_env(profile), on_event)
        codes = pool.run(lambda: stop["sig"])
        for item in items:  # stopped before a slot was free: never started (resume --local starts them)
            if item.name not in codes:
                procstate.ended(item.run_dir, item.job_id, procstate.EXIT_STOPPED)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
