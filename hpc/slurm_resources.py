"""The ``slurm:`` section of a grid file: what each array task of the grid asks Slurm for.

Validated at construction like every config section (the message names ``slurm.<field>``, the value
and the fix), before anything is queued.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from vit_train.config_tools import ConfigError, reject_unknown


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """Per-run Slurm resources of a grid (one array task = one run, or ``runs_per_gpu`` runs sharing its GPU)."""

    nodes: int = 1
    """Nodes per run."""
    gpus_per_node: int = 1
    """GPUs per node; 0 on CPU-only clusters."""
    tasks_per_node: int | None = None
    """Tasks (ranks) per node; None = gpus_per_node (one task per GPU). Required when gpus_per_node is 0."""
    cpus_per_task: int = 4
    """CPU cores per task (data loading workers live here)."""
    mem_gb: int = 32
    """Memory per node in GB."""
    time_min: int = 60
    """Time limit per run attempt in minutes; longer runs continue after a requeue."""
    partition: str | None = None
    """Slurm partition; None = the cluster's default (or the site profile's)."""
    account: str | None = None
    """Slurm account to charge; None = the user's default."""
    qos: str | None = None
    """Slurm QOS; None = default."""
    constraint: str | None = None
    """Node features (--constraint), e.g. "a100|h100"."""
    array_parallelism: int = 16
    """At most this many runs of the grid at once (the array's %N)."""
    signal_delay_s: int = 120
    """Send USR2 this many seconds before the time limit, so the run checkpoints and requeues."""
    max_requeues: int = 10
    """Requeue a run at most this many times after time-outs or preemption."""
    runs_per_gpu: int = 1
    """Grid points per array task for one-GPU (or one-CPU-task) runs: each task gets one GPU and trains
    this many runs at once, one process each (hpc.packing); the array has ceil(runs / runs_per_gpu)
    tasks. On CPU grids the task's cpus_per_task are split between them."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _OPTIONAL_STR_FIELDS:
                if value is not None and (not isinstance(value, str) or not value):
                    _slurm_fail(f.name, value, "expected a non-empty string, or null for the default")
            elif not (type(value) is int or (value is None and f.name == "tasks_per_node")):
                _slurm_fail(f.name, value, "expected an integer")  # bool and 1.5 are not integers here
        for name, low in (("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 1), ("mem_gb", 1),
                          ("time_min", 1), ("array_parallelism", 1), ("signal_delay_s", 0), ("max_requeues", 0),
                          ("runs_per_gpu", 1)):
            if getattr(self, name) < low:
                _slurm_fail(name, getattr(self, name), f"use {low} or more")
        if self.tasks_per_node is None:
            if self.gpus_per_node == 0:
                _slurm_fail("tasks_per_node", None, "with gpus_per_node: 0, set the CPU tasks per node (e.g. 1)")
            object.__setattr__(self, "tasks_per_node", self.gpus_per_node)
        elif self.tasks_per_node < 1:
            _slurm_fail("tasks_per_node", self.tasks_per_node, "use 1 or more")
        elif self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            _slurm_fail(
                "tasks_per_node",
                self.tasks_per_node,
                f"runs use one task per GPU; set it to gpus_per_node={self.gpus_per_node} or leave it null",
            )
        if self.runs_per_gpu > 1:
            self._check_packable()
        if self.signal_delay_s >= self.time_min * 60:
            _slurm_fail(
                "signal_delay_s",
                self.signal_delay_s,
                f"must be shorter than time_min={self.time_min} minutes; use e.g. {min(120, self.time_min * 30)}",
            )

    def _check_packable(self) -> None:
        """Packing shares one GPU (or one task's CPUs) between one-process runs; a run of several ranks
        or GPUs would need its own process group per packed run, which is not what this does."""
        k = self.runs_per_gpu
        for name, limit, fix in (("nodes", 1, "set nodes: 1"), ("gpus_per_node", 1, "set gpus_per_node: 1 (or 0 on CPU)"),
                                 ("tasks_per_node", 1, "set tasks_per_node: 1 (or leave it null with one GPU)")):
            if getattr(self, name) > limit:
                _slurm_fail("runs_per_gpu", k, f"packs one-GPU runs, but {name}={getattr(self, name)}; "
                            f"{fix}, or runs_per_gpu: 1 for runs of several GPUs or ranks")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node  # type: ignore[operator]  # resolved in __post_init__

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus_per_node else "cpu"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SlurmResources":
        d = d or {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"slurm={d!r}: must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
        reject_unknown("slurm", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)


_OPTIONAL_STR_FIELDS = ("partition", "account", "qos", "constraint")


def _slurm_fail(name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"slurm.{name}={value!r}: {fix}")
