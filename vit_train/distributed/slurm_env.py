"""The one reader of the Slurm environment: a pure function from ``os.environ`` to a frozen record.

Under ``srun`` every task gets SLURM_* variables but none of the RANK/WORLD_SIZE/MASTER_* that
``torch.distributed`` reads, so :func:`read_slurm_env` derives them and :func:`torch_env` spells them
the way torchrun would. Everything here is pure (no torch, no subprocess, no ``scontrol``) so it can be
tested with a plain dict and imported on a login node.

Choices worth knowing:

* The step's node list, node count and tasks per node (``SLURM_STEP_*``) win over the job's: a step
  may run on a subset of the allocation, and its rank 0 runs on the step's first node (srun's default
  block distribution). srun already rewrites SLURM_NTASKS for its step.
* The rendezvous port is a function of ``SLURM_JOB_ID`` (unique per array task), so every task of a
  job computes the same port without talking to the others, and two jobs sharing a node (array tasks,
  or the one-host dev cluster) get different ports. The range 20000-31999 stays below Linux's
  ephemeral range (32768+), where a port could already be held by an outgoing connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 12000


class SlurmEnvError(ValueError):
    """A SLURM_* variable is malformed or inconsistent; the message names the variable and the value."""


@dataclass(frozen=True)
class ClusterEnv:
    """Where this process sits in a Slurm job."""

    rank: int
    """Global task rank (SLURM_PROCID)."""
    world_size: int
    """Tasks in the step (SLURM_NTASKS)."""
    local_rank: int
    """Task index on this node (SLURM_LOCALID)."""
    local_world_size: int
    """Tasks on this node (from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE)."""
    node_rank: int
    """Node index within the step (SLURM_NODEID)."""
    num_nodes: int
    """Nodes in the step (SLURM_STEP_NUM_NODES / SLURM_JOB_NUM_NODES / SLURM_NNODES)."""
    job_id: int
    """SLURM_JOB_ID; for an array task this is the task's own unique id."""
    array_job_id: int | None
    """SLURM_ARRAY_JOB_ID (shared by all tasks of an array); None outside arrays."""
    array_task_id: int | None
    """SLURM_ARRAY_TASK_ID; None outside arrays."""
    hosts: tuple[str, ...]
    """Expanded node list of the step (or job)."""
    master_addr: str
    """First host of the node list: where rank 0 runs."""
    master_port: int
    """Rendezvous port, derived from job_id (see :func:`master_port_for`)."""
    restart_count: int
    """SLURM_RESTART_COUNT: how many times this job was requeued (0 on the first run)."""
    visible_gpus: tuple[str, ...]
    """GPU ids this task can see (CUDA_VISIBLE_DEVICES, else SLURM_STEP_GPUS / SLURM_JOB_GPUS)."""

    def __post_init__(self) -> None:
        for name, value, size in (
            ("rank (SLURM_PROCID)", self.rank, self.world_size),
            ("local_rank (SLURM_LOCALID)", self.local_rank, self.local_world_size),
            ("node_rank (SLURM_NODEID)", self.node_rank, self.num_nodes),
        ):
            if not 0 <= value < size:
                raise SlurmEnvError(f"{name}={value}: must lie in [0, {size}); the Slurm variables disagree")

    @property
    def is_array(self) -> bool:
        return self.array_job_id is not None

    @property
    def display_id(self) -> str:
        """The id squeue/sacct show: ``<array job>_<task>`` for array tasks, else the job id."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)


def master_port_for(job_id: int) -> int:
    return MASTER_PORT_BASE + job_id % MASTER_PORT_SPAN


def read_slurm_env(env: Mapping[str, str]) -> ClusterEnv | None:
    """Read a Slurm task's position from ``env``; None when this process is not a Slurm task.

    A shell inside ``salloc`` has SLURM_JOB_ID but no SLURM_PROCID: it is not a task, so None.
    """
    if "SLURM_PROCID" not in env or "SLURM_JOB_ID" not in env:
        return None
    job_id = _int(env, "SLURM_JOB_ID")
    world_size = _int(env, "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_NPROCS", default=1)
    hosts = _hosts(env, world_size)
    num_nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", default=len(hosts))
    node_rank = _int(env, "SLURM_NODEID", default=0)
    tasks_per_node = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if tasks_per_node is not None:
        local_world_size = _tasks_on_node(tasks_per_node, node_rank)
    elif world_size % num_nodes == 0:
        local_world_size = world_size // num_nodes
    else:
        local_world_size = 1
    return ClusterEnv(
        rank=_int(env, "SLURM_PROCID"),
        world_size=world_size,
        local_rank=_int(env, "SLURM_LOCALID", default=0),
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        job_id=job_id,
        array_job_id=_opt_int(env, "SLURM_ARRAY_JOB_ID"),
        array_task_id=_opt_int(env, "SLURM_ARRAY_TASK_ID"),
        hosts=hosts,
        master_addr=hosts[0],
        master_port=master_port_for(job_id),
        restart_count=_int(env, "SLURM_RESTART_COUNT", default=0),
        visible_gpus=_visible_gpus(env),
    )


def torch_env(cluster_env: ClusterEnv) -> dict[str, str]:
    """The variables torchrun would set, for ``torch.distributed.init_process_group(init_method="env://")``."""
    c = cluster_env
    return {
        "RANK": str(c.rank),
        "WORLD_SIZE": str(c.world_size),
        "LOCAL_RANK": str(c.local_rank),
        "LOCAL_WORLD_SIZE": str(c.local_world_size),
        "MASTER_ADDR": c.master_addr,
        "MASTER_PORT": str(c.master_port),
    }


# ---------------------------------------------------------------------------- variable helpers
def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[n] for n in names if env.get(n, "") != ""), None)


def _opt_int(env: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` that is set, as an int; None when none is set."""
    for name in names:
        raw = env.get(name, "")
        if raw != "":
            try:
                return int(raw)
            except ValueError:
                raise SlurmEnvError(f"{name}={raw!r}: expected an integer") from None
    return None


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int:
    value = _opt_int(env, *names)
    if value is not None:
        return value
    if default is None:
        raise SlurmEnvError(f"{names[0]} is not set; run the program as a Slurm task (srun/sbatch)")
    return default


def _hosts(env: Mapping[str, str], world_size: int) -> tuple[str, ...]:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(name, ""):
            try:
                return tuple(expand_hostlist(env[name]))
            except ValueError as e:
                raise SlurmEnvError(f"{name}={env[name]!r}: {e}") from None
    if world_size > 1:
        raise SlurmEnvError(
            f"SLURM_JOB_NODELIST is not set but SLURM_NTASKS={world_size}: rank 0's host is unknown; "
            "run under srun/sbatch, which set it"
        )
    return ("127.0.0.1",)


def _tasks_on_node(spec: str, node_rank: int) -> int:
    """Tasks on node ``node_rank`` from Slurm's compressed form, e.g. ``"2(x3),1"`` = 2,2,2,1."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            raise SlurmEnvError(f"SLURM_TASKS_PER_NODE={spec!r}: expected a list like '2(x3),1'")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    if node_rank >= len(counts):
        raise SlurmEnvError(f"SLURM_NODEID={node_rank}: SLURM_TASKS_PER_NODE={spec!r} lists only {len(counts)} nodes")
    return counts[node_rank]


def _visible_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        raw = _first(env, "SLURM_STEP_GPUS", "SLURM_JOB_GPUS") or ""
    # Some Slurm versions write "NoDevFiles" when the job has no GPU.
    if raw.strip() in ("", "NoDevFiles"):
        return ()
    return tuple(g.strip() for g in raw.split(",") if g.strip())


# ---------------------------------------------------------------------------- hostlist syntax
def expand_hostlist(hostlist: str) -> list[str]:
    """Expand Slurm hostlist syntax like ``scontrol show hostnames`` does, in pure Python.

    ``gpu[01-03,07],cpu3`` -> gpu01 gpu02 gpu03 gpu07 cpu3; ``a-b[1,3-4]-x`` -> a-b1-x a-b3-x a-b4-x;
    ``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2. A range keeps the zero padding of its lower bound.
    Raises ValueError naming the position of the first syntax error.
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist):
        hosts.extend(_expand_item(item))
    if not hosts:
        raise ValueError(f"hostlist {hostlist!r} names no host")
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    """Split on commas/whitespace outside brackets; reject unbalanced or nested brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist):
        if ch == "[":
            if depth:
                raise ValueError(f"nested '[' at position {i} in {hostlist!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"']' without '[' at position {i} in {hostlist!r}")
            depth = 0
        elif depth == 0 and (ch == "," or ch.isspace()):
            items.append(hostlist[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unclosed '[' in {hostlist!r}")
    items.append(hostlist[start:])
    return [it for it in items if it]


def _expand_item(item: str) -> list[str]:
    m = re.match(r"([^\[]*)\[([^\]]*)\](.*)", item)
    if m is None:
        return [item]
    prefix, ranges, rest = m.groups()
    tails = _expand_item(rest) if rest else [""]
    return [f"{prefix}{n}{tail}" for n in _expand_ranges(ranges, item) for tail in tails]


def _expand_ranges(ranges: str, item: str) -> list[str]:
    out: list[str] = []
    for part in ranges.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if m is None:
            raise ValueError(f"bad range {part!r} in {item!r}; use forms like [1-4,7] or [01-08]")
        lo_s, hi_s = m.group(1), m.group(2) or m.group(1)
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise ValueError(f"range {part!r} in {item!r} runs backwards")
        out.extend(str(n).zfill(len(lo_s)) for n in range(lo, hi + 1))
    return out
