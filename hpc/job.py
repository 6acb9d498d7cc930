"""What submitit runs in every task of a run's job: ``TrainJob(config_dict, run_dir)()``.

Preemption and time limits. Slurm sends USR2 ``signal_delay_s`` before the limit (or on preemption,
with ``preempt_send_user_signal``). submitit's own USR2 handler would requeue at once, killing the
ranks mid-step, so each task swaps it for a :class:`~vit_train.cli.StopFlag` and keeps submitit's
handler. The trainer stops at the next step boundary on all ranks together and saves a checkpoint
collectively; ``run`` returns 3. Then rank 0 calls submitit's handler, which calls :meth:`checkpoint`
(a resubmission of this same job), runs ``scontrol requeue`` and exits; the other ranks wait to be
killed by the requeue. The requeued job starts this function again, which resumes from the newest
complete checkpoint in run_dir: nothing here needs to remember where it was.

SIGTERM alone (scancel, or a preemption without the user signal) also stops the loop with a
checkpoint, but does not requeue: Slurm decides what happens next (cancelled, or requeued by itself).

Exit. On CPU a few percent of ColossalAI processes abort at interpreter exit (see
vit_train/shutdown.py), which would turn a finished run into a FAILED job. Returning the result lets
submitit write its result pickle; an atexit hook, registered just before, then leaves through
``os._exit`` with 0 iff that pickle exists, before the interpreter's teardown can abort.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from hpc.runstate import RESULT_FILE, record_attempt
from vit_train.cli import EXIT_OK, EXIT_PREEMPTED, StopFlag, run, setup_logging
from vit_train.config import RunConfig
from vit_train.distributed.shutdown import clean_exit

REQUEUE_WAIT_S = 120.0
"""How long ranks other than 0 wait for the requeue to kill them before exiting on their own."""

log = logging.getLogger(__name__)


class _JobStop(StopFlag):
    """StopFlag that remembers every signal seen, to tell a USR2 (requeue) from a SIGTERM (don't)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen.add(signum)
        super()._handle(signum, frame)


def completed_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "completed" else None


class TrainJob(submitit.helpers.Checkpointable):
    """One run of a grid, as submitted to Slurm; re-running it is always safe (idempotent)."""

    def __init__(self, config_dict: dict[str, Any], run_dir: str) -> None:
        self.config_dict = dict(config_dict)
        self.run_dir = str(run_dir)

    def __call__(self) -> dict[str, Any] | None:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        run_dir = Path(self.run_dir)
        if rank == 0:
            record_attempt(run_dir, os.environ)
        done = completed_result(run_dir)
        if done is not None:  # a requeue or a re-submission of a finished run: nothing to train
            return done if rank == 0 else None
        cfg = RunConfig.from_dict(self.config_dict)
        if Path(cfg.output_dir).absolute() != run_dir.absolute():
            raise ValueError(f"output_dir={cfg.output_dir!r} is not the run folder {run_dir}; resubmit the grid")

        usr_sig = submitit.JobEnvironment._usr_sig() if _in_submitit() else signal.SIGUSR2
        submitit_handler = signal.getsignal(usr_sig)
        stop = _JobStop()
        stop.install((usr_sig, signal.SIGTERM))
        setup_logging()
        code = self.train(cfg, stop)
        if code == EXIT_OK:
            result = completed_result(run_dir) if rank == 0 else None
            _teardown_process_group()
            _exit_after_result_is_saved()
            return result
        if code == EXIT_PREEMPTED:
            return self._after_preemption(rank, stop, usr_sig, submitit_handler)
        raise RuntimeError(f"training exited with code {code} (2 = invalid config for this job's size; see the log)")

    def train(self, cfg: RunConfig, stop: StopFlag) -> int:
        """The training entry point: 0 completed, 3 stopped with a checkpoint saved, 2 bad config."""
        return run(cfg, stop)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler on rank 0: requeue the same job; state lives in run_dir."""
        return submitit.helpers.DelayedSubmission(type(self)(self.config_dict, self.run_dir))

    def _after_preemption(self, rank: int, stop: _JobStop, usr_sig: int, handler: Any) -> dict[str, Any] | None:
        """The checkpoint is saved (collectively); requeue through submitit, or leave the decision to Slurm."""
        # Every rank has returned from run() (rank 0 has written progress.json "preempted") before any
        # rank exits: srun --kill-on-bad-exit would otherwise kill rank 0 mid-write when a peer exits 3.
        from vit_train.distributed.process_group import barrier  # torch: imported in the job only, not on the login node

        try:
            barrier()
        except Exception as e:  # a peer already gone: nothing left to wait for
            log.warning("barrier after preemption failed: %r", e)
        # No signal here but a stop all the same: another rank got USR2 (all_reduce'd stop flag).
        requeue = usr_sig in stop.seen or not stop.seen
        if not callable(handler):  # not started by submitit (a direct call in a test): just report
            return {"status": "preempted"} if rank == 0 else None
        if not requeue:
            log.warning("stopped by SIGTERM after saving a checkpoint; not requeueing (cancel or Slurm's own requeue)")
            clean_exit(EXIT_PREEMPTED)
        if rank == 0:
            # -> self.checkpoint(), `scontrol requeue`, sys.exit(-1). When submitit decides not to requeue
            # (more than max_requeues time-outs) it raises UncompletedJobError instead: that propagates,
            # submitit records it, and the job fails with that message (resume continues the run).
            try:
                handler(usr_sig, None)
            except SystemExit:
                pass
            clean_exit(EXIT_PREEMPTED)
        deadline = time.monotonic() + REQUEUE_WAIT_S
        while signal.SIGTERM not in stop.seen and time.monotonic() < deadline:
            time.sleep(0.5)
        clean_exit(EXIT_PREEMPTED)


def _in_submitit() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR", "") != ""


def _teardown_process_group() -> None:
    """Barrier + destroy, so no rank leaves while a peer still talks to it (gloo would then error)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _exit_after_result_is_saved() -> None:
    """After submitit pickles our return value, exit with os._exit before interpreter teardown."""
    if not _in_submitit():
        return
    result_pickle = submitit.JobEnvironment().paths.result_pickle

    def _hook(streams: Sequence[Any] = (sys.stdout, sys.stderr)) -> None:
        code = 0 if result_pickle.exists() else 1
        logging.shutdown()
        for s in streams:
            try:
                s.flush()
            except Exception:
                pass
        os._exit(code)

    atexit.register(_hook)
