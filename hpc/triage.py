"""Why did a run's job stop, and is resubmitting it worth it? A pure function of what Slurm and the log say.

:func:`classify_failure` takes the job's Slurm state and exit code (sacct), its reason, and the tail of
the rank-0 log (submitit's ``<id>_0_log.err``), and returns a :class:`Triage`: one of :data:`KINDS`,
whether a plain resubmission can succeed (``retry``), and a one-line detail for the status table.

Order of evidence, and why:

1. Slurm's own verdicts (OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, TIMEOUT): the job never got to say more.
2. Out-of-memory lines in the log, before anything else in it: one rank's OOM makes its peers fail in a
   collective, and the OOM is the cause, the timeout only its echo.
3. Collective timeouts (NCCL watchdog, gloo): they also print a Python traceback, which is not the cause.
4. Slurm's "*** ... CANCELLED AT ... DUE TO <WHY> ***" line (time limit, preemption, node failure).
5. A Python traceback: its last ``File "...", line N, in f`` frame and the exception line.
6. CANCELLED with nothing else: a person (or ``submit --force``) cancelled it.

``retry`` is True where the cause is outside the run (preemption, time limit, node failure, a collective
timeout after a peer or the network went away): resubmitting continues from the newest complete
checkpoint. It is False where the same job would fail the same way (OOM, a Python exception) or where a
person decided (cancelled); those need a change or an explicit ``resume``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("out_of_memory", "collective_timeout", "node_failure", "preempted", "time_limit", "python_exception",
         "cancelled", "unknown")


@dataclass(frozen=True)
class Triage:
    kind: str
    """One of KINDS."""
    retry: bool
    """A plain resubmission can succeed (the cause is outside the run)."""
    detail: str
    """One line for the status table: the evidence, and the fix where there is one."""


_OOM = re.compile(r"(torch\.)?(cuda\.)?OutOfMemoryError|CUDA out of memory|oom[-_]kill|Out Of Memory|"
                  r"out of memory|MemoryError|Killed process \d+ .*total-vm", re.IGNORECASE)
_COLLECTIVE = re.compile(r"Watchdog caught collective operation timeout|ProcessGroupNCCL.*[Tt]imeout|"
                         r"NCCL (communicator was aborted|error).*[Tt]imeout|gloo.*(Timed out|timed out|timeout)|"
                         r"Timed out waiting \d+ms for (recv|send)|DistBackendError.*[Tt]imeout|"
                         r"Socket Timeout|connectFullMesh failed", re.IGNORECASE)
_SLURM_CANCEL = re.compile(r"\*\*\* (?:JOB|STEP) [\w.]+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))?(?:,.*)? \*\*\*")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)|[A-Za-z_][\w.]*\.\w+)(: .*)?$")
_DUE_TO = {"TIME LIMIT": "time_limit", "PREEMPTION": "preempted", "NODE FAILURE": "node_failure"}
_RETRY = {"out_of_memory": False, "collective_timeout": True, "node_failure": True, "preempted": True,
          "time_limit": True, "python_exception": False, "cancelled": False, "unknown": False}


def _make(kind: str, detail: str) -> Triage:
    return Triage(kind, _RETRY[kind], detail if len(detail) <= 300 else detail[:297] + "...")


def last_exception(log_tail: str) -> tuple[str, str] | None:
    """(last frame 'File "...", line N, in f', exception line) of the last traceback in the text, if any."""
    lines = log_tail.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip().startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    frame, exc = "", ""
    for ln in lines[starts[-1] + 1:]:
        m = _FRAME.match(ln)
        if m:
            frame = f'File "{m.group(1)}", line {m.group(2)}, in {m.group(3)}'
            continue
        s = ln.strip()
        if frame and not ln.startswith((" ", "\t")) and _EXC.match(s):
            exc = s
            break
    return (frame, exc) if frame and exc else None


def classify_failure(slurm_state: str | None, exit_code: str | None, reason: str | None, log_tail: str) -> Triage:
    """Kind of failure, whether to retry, and a one-line detail (see the module docstring for the order)."""
    state = (slurm_state or "").split()[0].upper() if slurm_state else ""
    code = exit_code or ""
    why = (reason or "").strip()
    lines = [ln.strip() for ln in (log_tail or "").splitlines() if ln.strip()]

    def first(rx: re.Pattern[str]) -> str | None:
        return next((ln for ln in reversed(lines) if rx.search(ln)), None)

    if state == "OUT_OF_MEMORY":
        return _make("out_of_memory", f"Slurm: OUT_OF_MEMORY (exit {code}); raise slurm.mem_gb or lower optim.batch_size")
    if state == "NODE_FAIL" or why in ("NodeFail", "NodeDown"):
        return _make("node_failure", f"Slurm: node failure ({why or state}); resubmit, the run continues from its checkpoint")
    if state == "PREEMPTED":
        return _make("preempted", "Slurm: preempted; resubmit, the run continues from its checkpoint")
    if state in ("TIMEOUT", "DEADLINE"):
        return _make("time_limit", f"Slurm: {state}; resubmit (it continues), or raise slurm.time_min / signal_delay_s")
    oom = first(_OOM)
    if oom:
        return _make("out_of_memory", f"{oom}; lower optim.batch_size or use more ranks/memory")
    coll = first(_COLLECTIVE)
    if coll:
        return _make("collective_timeout", f"{coll}; a peer rank died or the network stalled: check the other ranks' logs")
    cancel = first(_SLURM_CANCEL)
    due = ""
    if cancel:
        m = _SLURM_CANCEL.search(cancel)
        due = (m.group(1) or "").strip() if m else ""
        if due in _DUE_TO:
            return _make(_DUE_TO[due], cancel)
    exc = last_exception(log_tail or "")
    if exc is not None:
        return _make("python_exception", f"{exc[1]} ({exc[0]})")
    if state == "CANCELLED" or (cancel and not due):
        return _make("cancelled", "cancelled (scancel or submit --force); `resume` continues it")
    tail = lines[-1] if lines else ""
    return _make("unknown", "; ".join(x for x in (f"{state} exit {code}".strip() if state or code else "", why, tail) if x)
                 or "no Slurm record and no log")
