"""``python -m hpc.child JOB_PICKLE RUN_DIR JOB_ID``: one run's process under a packed task or ``--local``.

Started by :class:`hpc.procpool.Pool` with SIGINT, SIGTERM and SIGUSR2 blocked. Here SIGINT is
ignored (Ctrl-C is for the launcher, which forwards SIGTERM), a recording handler takes the other
two, and only then are they unblocked: a stop that arrives before training starts ends the process
with exit 3 and nothing trained; one that arrives later reaches the job's own
:class:`~vit_train.cli.StopFlag` (the job installs it before it builds anything), so the run stops
at a step boundary with a checkpoint. The job is the same :class:`~hpc.job.TrainJob` an unpacked
Slurm task runs; outside submitit it reports a stop as ``{"status": "preempted"}`` and leaves any
requeue to the launcher.

Exit codes: 0 completed (or already finished), 3 stopped with a checkpoint, 1 failed (the traceback
is on stderr, which is the run's own log). They also go into process.json before the exit, in case
the launcher is gone.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3
_early: list[int] = []


def _record(signum: int, frame: Any) -> None:
    _early.append(signum)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(s, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2))
    if len(argv) != 3:
        print("usage: python -m hpc.child JOB_PICKLE RUN_DIR JOB_ID", file=sys.stderr)
        return 2
    job_file, run_dir, job_id = Path(argv[0]), Path(argv[1]), argv[2]
    code = EXIT_FAILED
    try:
        import cloudpickle

        job = cloudpickle.loads(job_file.read_bytes())
        if _early:
            print(f"hpc.child: stopped by signal {_early[0]} before training started", file=sys.stderr, flush=True)
            code = EXIT_STOPPED
        else:
            result = job()
            code = EXIT_OK if isinstance(result, dict) and result.get("status") == "completed" else EXIT_STOPPED
    except BaseException:  # the traceback is the run's failure reason (hpc.triage reads this log)
        import traceback

        traceback.print_exc()
        code = EXIT_FAILED
    from hpc import procstate

    procstate.ended(run_dir, job_id, code)
    from vit_train.distributed.shutdown import clean_exit

    clean_exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
