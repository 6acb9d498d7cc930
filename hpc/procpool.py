"""Runs as child processes on a fixed set of slots: the engine of packed tasks and of ``submit --local``.

Each run is its own process, ``python -m hpc.child`` on a cloudpickle of its
:class:`~hpc.job.TrainJob`, so it is the same job code as an unpacked Slurm task (record the
attempt, skip if finished, train, stop at a step boundary with a checkpoint on USR2/SIGTERM), with its
own run folder, log files (``<run>/logs/<job_id>.out|.err``), checkpoints and TensorBoard files. A
slot is one GPU (``CUDA_VISIBLE_DEVICES``) or the launcher's own device, and a share of the
launcher's CPUs (affinity and ``OMP_NUM_THREADS``); at most one run per slot at a time.

Stopping. When ``stop_signal()`` returns a signal, no further run is started and that signal is
sent to every live run, again every ``RESEND_S`` (a no-op for a run already stopping, and a safety
net should one arrive before the run listens). A child is started with SIGINT, SIGTERM and SIGUSR2
blocked: it installs its handlers first and then unblocks them, so a signal sent at any moment is
never lost nor fatal; Ctrl-C in a terminal therefore reaches the launcher only, which decides.

A run that fails does not stop the others: its exit code goes into its process.json
(:mod:`hpc.procstate`) and into the returned codes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hpc import procstate
from vit_train.components.fsutil import make_private_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
RESEND_S = 5.0
CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
# A child is a world of one of its own: nothing of the launcher's rank may leak into it.
_DROP = ("SLURM_PROCID", "SLURM_LOCALID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
         "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class Slot:
    cuda_visible: str | None
    """CUDA_VISIBLE_DEVICES of a run in this slot; None = the launcher's (a packed task's one GPU)."""
    cpus: tuple[int, ...] = ()
    """CPU affinity; () = the launcher's."""

    @property
    def label(self) -> str:
        gpu = {"": "cpu", None: "the task's device"}.get(self.cuda_visible, f"gpu {self.cuda_visible}")
        return f"{gpu}, cpus {_ranges(self.cpus)}" if self.cpus else gpu


@dataclass(frozen=True)
class Item:
    name: str
    run_dir: Path
    job: Any
    """The picklable TrainJob of the run."""
    job_id: str


def split_cpus(cpus: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """n contiguous shares of ``cpus`` (sizes differ by at most one); with fewer CPUs than shares, they
    are shared round-robin."""
    cpus = sorted(cpus)
    if not cpus:
        return [()] * n
    if n > len(cpus):
        return [(cpus[i % len(cpus)],) for i in range(n)]
    size, extra = divmod(len(cpus), n)
    out, at = [], 0
    for i in range(n):
        take = size + (i < extra)
        out.append(tuple(cpus[at:at + take]))
        at += take
    return out


def available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def child_env(base: Mapping[str, str], slot: Slot, job_id: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _DROP and not k.startswith("SUBMITIT_")}
    env[procstate.JOB_ID_ENV] = job_id
    env["PYTHONUNBUFFERED"] = "1"
    if slot.cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.cuda_visible
    if slot.cpus:
        have = env.get("OMP_NUM_THREADS", "")
        env["OMP_NUM_THREADS"] = str(min(len(slot.cpus), int(have))) if have.isdigit() and int(have) > 0 \
            else str(len(slot.cpus))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:  # `python -m hpc.child` must import this checkout
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])
    return env


class Pool:
    """Start ``items`` on ``slots`` (one run per slot at a time) and reap them; see the module docstring."""

    def __init__(self, items: Sequence[Item], slots: Sequence[Slot], env: Mapping[str, str],
                 on_event: Callable[[Item, str, int | None, Slot], None] = lambda *a: None) -> None:
        if not slots:
            raise ValueError("no slots to run on")
        self.items, self.slots, self.env, self.on_event = list(items), list(slots), dict(env), on_event
        self.pids: dict[str, int] = {}

    def run(self, stop_signal: Callable[[], int | None], poll_s: float = 0.2) -> dict[str, int]:
        """Run until every item ended, or until stopping and every started one ended; returns the exit
        codes of the runs that were started (Popen's: negative = killed by that signal)."""
        pending, free = deque(self.items), list(self.slots)
        live: dict[str, tuple[subprocess.Popen[bytes], Slot, Item]] = {}
        codes: dict[str, int] = {}
        sent: tuple[int | None, float] = (None, 0.0)
        for item in pending:
            procstate.queued(item.run_dir, item.job_id)
        while pending or live:
            sig = stop_signal()
            while sig is None and pending and free:
                item, slot = pending.popleft(), free.pop(0)
                live[item.name] = (self._start(item, slot), slot, item)
            for name, (proc, slot, item) in list(live.items()):
                code = proc.poll()
                if code is None:
                    continue
                del live[name]
                free.append(slot)
                codes[name] = code
                procstate.ended(item.run_dir, item.job_id, code)
                self.on_event(item, "ended", code, slot)
            if sig is not None:
                if not live:
                    break
                now = time.monotonic()
                if sent[0] != sig or now - sent[1] >= RESEND_S:
                    for proc, _, _ in live.values():
                        _send(proc, sig)
                    sent = (sig, now)
            time.sleep(poll_s)
        return codes

    def _start(self, item: Item, slot: Slot) -> subprocess.Popen[bytes]:
        import cloudpickle

        logs = make_private_dir(item.run_dir / procstate.LOG_DIR)
        job_file = logs / f"{item.job_id}.job.pkl"
        tmp = job_file.with_name(job_file.name + ".tmp")
        tmp.write_bytes(cloudpickle.dumps(item.job))
        os.replace(tmp, job_file)
        out_path, err_path = procstate.log_paths(item.run_dir, item.job_id)
        cmd = [sys.executable, "-u", "-m", "hpc.child", str(job_file), str(item.run_dir), item.job_id]
        env = child_env(self.env, slot, item.job_id)
        files: list[IO[bytes]] = [open(out_path, "ab"), open(err_path, "ab")]
        # Blocked in the child until it has its handlers (hpc.child unblocks them); see the module docstring.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=files[0], stderr=files[1], env=env,
                                    cwd=os.getcwd())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            for f in files:
                f.close()
        if slot.cpus:
            try:
                os.sched_setaffinity(proc.pid, slot.cpus)
            except (AttributeError, OSError):
                pass
        rec = procstate.read_record(item.run_dir)
        if rec is None or rec.job_id != item.job_id:
            rec = procstate.queued(item.run_dir, item.job_id)
        procstate.started(item.run_dir, rec, proc.pid, env.get("CUDA_VISIBLE_DEVICES", ""))
        self.pids[item.name] = proc.pid
        self.on_event(item, "started", None, slot)
        return proc


def _send(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _ranges(cpus: Sequence[int]) -> str:
    if not cpus:
        return "-"
    parts, start, prev = [], cpus[0], cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)
