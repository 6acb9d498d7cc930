"""What submitit runs in an array task that packs several runs on one GPU (``slurm.runs_per_gpu`` > 1).

:class:`PackedJob` holds the :class:`~hpc.job.TrainJob` of each run of its task and trains them at
once, one process each (:mod:`hpc.procpool`), sharing the task's GPU and splitting its CPUs.

* Finished runs are skipped (a requeued task trains only what is left), and so are runs whose process
  failed in an earlier attempt of this same task (``resume`` reruns those, as for an unpacked job) and
  runs submitted again since as another job.
* A run that crashes does not stop its neighbours: its exit code goes into its process.json, its
  traceback into its own log (``<run>/logs/<job_id>.err``), and ``status`` shows it failed while the
  others run on. When all are done and one failed, the task fails with a summary.
* USR2 (``signal_delay_s`` before the time limit, or a preemption): submitit's handler is swapped for
  a flag, as in :class:`~hpc.job.TrainJob`; the signal goes to every run, each stops at its next step
  boundary and saves a complete checkpoint, and once all have exited submitit's handler requeues
  the task (:meth:`checkpoint` resubmits this same PackedJob). SIGTERM alone stops them the same way
  but does not requeue (scancel; Slurm decides).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from hpc import procpool, procstate, runstate
from hpc.job import _JobStop, _in_submitit, completed_result

log = logging.getLogger(__name__)


def task_job_id(env: Any = os.environ) -> str:
    """The id squeue/sacct show for this task: ``<array>_<task>``, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", f"{procstate.LOCAL_PREFIX}{os.getpid()}")


class PackedJob(submitit.helpers.Checkpointable):
    """Several runs of a grid in one array task; re-running it is always safe (idempotent)."""

    def __init__(self, jobs: list[Any], created_at: float | None = None) -> None:
        self.jobs = list(jobs)
        # When submit made it: a run whose run.json lists a later submission under another id is not ours.
        self.created_at = time.time() if created_at is None else created_at

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        job_id = task_job_id()
        usr_sig = submitit.JobEnvironment._usr_sig() if _in_submitit() else signal.SIGUSR2
        submitit_handler = signal.getsignal(usr_sig)
        stop = _JobStop()
        stop.install((usr_sig, signal.SIGTERM))
        items, skipped = [], {}
        for job in self.jobs:
            run_dir = Path(job.run_dir)
            if completed_result(run_dir) is not None:
                skipped[run_dir.name] = "finished"
            elif procstate.failed_in(run_dir, job_id):
                skipped[run_dir.name] = "failed in an earlier attempt of this task (resume reruns it)"
            elif self._resubmitted(run_dir, job_id):
                skipped[run_dir.name] = "submitted again since, as another job (two jobs never share a run folder)"
            else:
                items.append(procpool.Item(run_dir.name, run_dir, job, job_id))
        for name, why in skipped.items():
            log.info("packed task %s: skip %s (%s)", job_id, name, why)
        cpus = procpool.available_cpus()
        slots = [procpool.Slot(None, share) for share in procpool.split_cpus(cpus, max(len(items), 1))]

        def event(item: procpool.Item, what: str, code: int | None, slot: procpool.Slot) -> None:
            text = "" if code is None else f" ({procstate.exit_text(code)[1]})"
            log.info("packed task %s: %s %s%s on %s; log %s", job_id, what, item.name, text, slot.label,
                     procstate.log_paths(item.run_dir, item.job_id)[1])

        codes = procpool.Pool(items, slots, os.environ, event).run(lambda: stop.signum) if items else {}
        failed = {n: c for n, c in codes.items() if c not in (procstate.EXIT_OK, procstate.EXIT_STOPPED)}
        stopped = [it.name for it in items if codes.get(it.name, procstate.EXIT_STOPPED) == procstate.EXIT_STOPPED]
        if stop.signum is not None and stopped:  # (a run not started yet counts as stopped)
            self._requeue_or_stop(stop, usr_sig, submitit_handler)
        if failed:
            raise RuntimeError(f"{len(failed)} of the {len(self.jobs)} runs of packed task {job_id} failed: " +
                               "; ".join(f"{n} ({procstate.exit_text(c)[1]}; see {n}/{procstate.LOG_DIR}/{job_id}.err)"
                                         for n, c in failed.items()))
        return {"status": "completed", "runs": {**{n: "completed" for n in codes}, **skipped}}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler: requeue the same task; each run's state lives in its folder."""
        return submitit.helpers.DelayedSubmission(type(self)(self.jobs, self.created_at))

    def _resubmitted(self, run_dir: Path, job_id: str) -> bool:
        # run.json is written just after sbatch returns, so a task that starts at once may still see the
        # previous submission there: only a later submission under another id means "not ours".
        rec = runstate.read_run_record(run_dir)
        last = rec.submissions[-1] if rec is not None and rec.submissions else None
        return last is not None and last.job_id != job_id and last.submitted_at > self.created_at

    def _requeue_or_stop(self, stop: _JobStop, usr_sig: int, handler: Any) -> None:
        """Every run has stopped with a checkpoint: requeue through submitit on USR2, else just exit."""
        if usr_sig in stop.seen and callable(handler):
            # -> self.checkpoint(), `scontrol requeue`, sys.exit; UncompletedJobError (max_requeues reached)
            # propagates, and submitit records it as the task's failure (resume continues the runs).
            try:
                handler(usr_sig, None)
            except SystemExit:
                pass
        else:
            log.warning("stopped by SIGTERM after the runs saved their checkpoints; not requeueing")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(procstate.EXIT_STOPPED)
