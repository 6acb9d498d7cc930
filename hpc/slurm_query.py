"""Slurm's view of a grid's jobs: ``squeue`` (current) merged over ``sacct`` (complete but lagging).

Both are read with one call each per status refresh; a missing command or a controller that does
not answer gives an empty answer, which :mod:`hpc.runstate` reports as "unknown" rather than failing.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmJobState:
    job_id: str
    state: str
    """First word of the state: "CANCELLED by 0" -> CANCELLED."""
    exit_code: str = ""
    reason: str = ""
    elapsed: str = ""
    name: str = ""
    """Job name (submit uses the grid name): tells a reused job id from ours, see :func:`run_state`."""
    previous: tuple[str, ...] = ()
    """End states of earlier attempts of a requeued job (sacct -D), oldest first, e.g. ("NODE_FAIL",)."""


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None  # not installed, or the controller does not answer: the caller reports "unknown"


def _expand_array_id(job_id: str) -> list[str]:
    """``12_[3-5,8%4]`` (pending tasks not yet split off) -> 12_3 12_4 12_5 12_8; others unchanged."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if m is None:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse_rows(text: str, names: tuple[str, ...]) -> dict[str, SlurmJobState]:
    states: dict[str, SlurmJobState] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < len(names) or "." in cells[0]:  # job steps (12.batch) are not jobs
            continue
        # the name comes last and may itself contain "|"
        cells = [*cells[: len(names) - 1], "|".join(cells[len(names) - 1:])]
        row = dict(zip(names, (c.strip() for c in cells)))
        state = (row.get("state") or "UNKNOWN").split()[0]
        for jid in _expand_array_id(row["job_id"]):
            states[jid] = SlurmJobState(jid, state, row.get("exit_code", ""), row.get("reason", ""),
                                        row.get("elapsed", ""), row.get("name", ""))
    return states


def _parents(job_ids: Iterable[str]) -> list[str]:
    # Ask for the array job, not task ids: sacct knows nothing of "12_3" while it is pending inside "12_[3-8]".
    return sorted({j.split("_")[0] for j in job_ids if j})


def sacct_states(job_ids: Iterable[str]) -> dict[str, SlurmJobState]:
    """States of jobs from accounting, one sacct call; {} when sacct is missing or fails (no slurmdbd)."""
    parents = _parents(job_ids)
    if not parents:
        return {}
    proc = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(parents),
                 "--format=JobID,State,ExitCode,Reason,Elapsed,JobName"])
    if proc is None or proc.returncode != 0:
        return {}
    states = _parse_rows(proc.stdout, ("job_id", "state", "exit_code", "reason", "elapsed", "name"))
    # Earlier attempts of requeued jobs (sacct -D lists every attempt): Slurm requeues a job whose node
    # failed by itself, so the run looks pending again; status should still say why it restarted.
    dup = _run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(parents), "--format=JobID,State"])
    failed_before: dict[str, list[str]] = {}
    for line in (dup.stdout.splitlines() if dup is not None and dup.returncode == 0 else []):
        jid, _, state = line.partition("|")
        word = (state.split() or [""])[0]
        if word in ATTEMPT_FAILURES:
            for j in _expand_array_id(jid.strip()):
                failed_before.setdefault(j, []).append(word)
    return {j: dataclasses.replace(st, previous=tuple(failed_before.get(j, ()))) for j, st in states.items()}


def squeue_states(job_ids: Iterable[str]) -> dict[str, SlurmJobState]:
    """Live states from slurmctld (jobs it still holds); {} when squeue is missing or fails."""
    parents = _parents(job_ids)
    if not parents:
        return {}
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r|%M|%j", "-j", ",".join(parents)])
    if proc is None or proc.returncode != 0:  # also when every id is unknown to slurmctld ("Invalid job id")
        return {}
    return _parse_rows(proc.stdout, ("job_id", "state", "reason", "elapsed", "name"))


ATTEMPT_FAILURES = ("NODE_FAIL", "BOOT_FAIL", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "PREEMPTED")


def slurm_states(job_ids: Iterable[str]) -> dict[str, SlurmJobState]:
    """squeue's state (current) over sacct's (may lag), with sacct's exit code; {} if neither answers."""
    ids = list(job_ids)
    live, acct = squeue_states(ids), sacct_states(ids)
    merged = dict(acct)
    for jid, st in live.items():
        old = acct.get(jid)
        merged[jid] = SlurmJobState(jid, st.state, old.exit_code if old else "", st.reason or (old.reason if old else ""),
                                    st.elapsed, st.name, old.previous if old else ())
    return merged


def lookup(states: Mapping[str, SlurmJobState], job_id: str) -> SlurmJobState | None:
    """The state of ``job_id``; an array cancelled while still pending as a whole is listed by sacct
    under its bare id ("128", not "128_0"), so a task id falls back to its array's record."""
    return states.get(job_id) or states.get(job_id.split("_")[0])
