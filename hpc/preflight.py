"""Checks that run before anything is queued or written: every failure of every run, at once.

A grid of 9 runs that dies in the queue an hour later because one path was wrong wastes the queue
wait of all 9; so before submit creates even the grid folder, this module checks, for every run:

* the config (done by :func:`hpc.grid.expand`; when it fails, each point is expanded on its own so
  that ALL bad points are reported, not only the first) and ``check_world`` against the grid's Slurm size;
* model and dataset reachable: local folders exist; hub ids are in the local Hugging Face cache when
  the job will run offline (``--offline``, or HF_HUB_OFFLINE=1 in the profile or the environment);
* ``slurm.runs_per_gpu`` runs fit in one GPU (the profile's ``gpu_mem_gb``; :mod:`hpc.packing`);
* the output root writable (a temp file is created in the nearest existing folder, then removed);
* the Slurm request: partition exists and its MaxTime / node count allow the request (sinfo: sbatch
  --test-only accepts a time over the partition limit and the job would pend forever with reason
  PartitionTimeLimit), then ``sbatch --test-only`` with the grid's exact options.

Failures are collected and raised as one :class:`PreflightError`; each names the run (its grid point),
the field and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc import packing
from hpc.grid import GridError, GridSpec, RunSpec, expand, load_grid
from vit_train.config import ConfigError
from hpc.site_profile import SiteProfile, executor_parameters, load_profile
from vit_train.model_shapes import PRESETS


@dataclass(frozen=True)
class Failure:
    where: str
    """The run(s) and their grid point, or "grid" / "all N runs"."""
    field: str
    """The grid or config field to change, e.g. parallel.tp_size, slurm.partition, output_root."""
    message: str
    """What is wrong and how to fix it."""

    def __str__(self) -> str:
        return f"{self.where}: {self.field + ': ' if self.field else ''}{self.message}"


class PreflightError(Exception):
    def __init__(self, source: str, failures: Sequence[Failure], runs: Sequence[RunSpec] | None = None) -> None:
        self.source, self.failures = source, list(failures)
        self.runs = None if runs is None else list(runs)
        """The runs that expanded (``submit --dry-run`` prints them before the problems); None when the
        grid file or its profile did not load."""
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"preflight of {source} failed ({len(self.failures)} problem(s)); nothing was submitted:\n{lines}")


Out = Callable[[str], None]


def check_file(path: str | Path, *, sbatch: bool = True, offline: bool = False, gpu_mem_gb: float | None = None,
               out: Out = print) -> tuple[GridSpec, SiteProfile, list[RunSpec]]:
    """Load the grid and its profile, then :func:`check`; file-level errors become a PreflightError too."""
    try:
        spec = load_grid(path)
        profile = load_profile(spec.profile)
    except ConfigError as e:  # GridError, ProfileError: the message names file, line and key
        raise PreflightError(str(path), [Failure("grid file", "", str(e))]) from None
    return spec, profile, check(spec, profile, sbatch=sbatch, offline=offline, gpu_mem_gb=gpu_mem_gb, out=out)


def check(spec: GridSpec, profile: SiteProfile, *, sbatch: bool = True, offline: bool = False,
          gpu_mem_gb: float | None = None, out: Out = print) -> list[RunSpec]:
    """All checks; returns the expanded runs, or raises PreflightError listing every failure.
    ``gpu_mem_gb`` (the GPUs ``--local`` sees) replaces the profile's for the runs_per_gpu check."""
    failures: list[Failure] = []
    runs = _expand_all(spec, failures)
    failures += _check_array_size(len(runs), sbatch)
    for run in runs:  # expand() ran it already; kept so this module alone guarantees it
        try:
            run.config.check_world(spec.slurm.world_size, spec.slurm.device_type)
        except ConfigError as e:
            failures.append(Failure(_where(run), "", str(e)))
    env = _job_env(profile)
    offline = offline or env.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes")
    failures += _check_sources(runs, len(_points(spec)), env, offline, out)
    failures += _check_output(spec)
    failures += _check_packing(spec, profile, runs, gpu_mem_gb)
    if sbatch:
        failures += _check_slurm(spec, profile)
    if failures:
        raise PreflightError(spec.source, failures, runs)
    return runs


DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


def _check_array_size(num_runs: int, sbatch: bool) -> list[Failure]:
    """A grid is one job array: more runs than MaxArraySize would be refused by sbatch only at submit."""
    limit = DEFAULT_MAX_ARRAY_SIZE
    if sbatch:
        proc = _run(["scontrol", "show", "config"])
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout if proc and proc.returncode == 0 else "", re.M)
        limit = int(m.group(1)) if m else limit
    if num_runs <= limit:
        return []
    return [Failure("grid", "grid", f"{num_runs} runs exceed this cluster's MaxArraySize={limit} (one job array per "
                    f"grid); split the grid into files of at most {limit} runs")]


# ---------------------------------------------------------------------------- configs
def _where(run: RunSpec) -> str:
    point = ", ".join(f"{k}={v!r}" for k, v in run.point.items())
    return f"run {run.index} {{{point}}}" if point else f"run {run.index}"


def _points(spec: GridSpec) -> list[dict[str, Any]]:
    """The grid's points in expansion order (cartesian axes, then each zip group as one axis)."""
    factors = [[{k: v} for v in vals] for k, vals in spec.grid.items()]
    factors += [[dict(zip(g, vals)) for vals in zip(*g.values())] for g in spec.zip]
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*factors)]


def _expand_all(spec: GridSpec, failures: list[Failure]) -> list[RunSpec]:
    """All runs; when expand() fails, every point alone, so ALL bad points are reported and the good
    ones still get the remaining checks."""
    try:
        return expand(spec)
    except GridError as whole:
        good, found = [], []
        for i, point in enumerate(_points(spec)):
            single = dataclasses.replace(spec, grid={k: (v,) for k, v in point.items()}, zip=())
            try:
                good.append(dataclasses.replace(expand(single)[0], index=i))
            except GridError as e:
                # "<file>: run 0 {point}: <field>=<value>: <fix>" -> where "run i {point}", the rest
                text = str(e).removeprefix(f"{spec.source}: ").removeprefix("run 0 ")
                cut = text.find("}: ") if text.startswith("{") else -1
                where, text = (f"run {i} {text[:cut + 1]}", text[cut + 3:]) if cut >= 0 else (f"run {i}", text)
                found.append(Failure(where, "", text))
        # Each point alone is fine: the failure is between points (two with one signature).
        failures.extend(found or [Failure("grid", "", str(whole).removeprefix(f"{spec.source}: "))])
        return good


# ---------------------------------------------------------------------------- model and data
def _job_env(profile: SiteProfile) -> dict[str, str]:
    """The environment the job will see for HF_* (profile exports over the submitting shell's)."""
    return {**os.environ, **{k: os.path.expandvars(v) for k, v in profile.env.items()}}


def _hub_cache(env: dict[str, str]) -> Path:
    home = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return Path(env.get("HF_HUB_CACHE") or home / "hub")


def _is_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def _group(bad: list[RunSpec], total: int) -> str:
    if len(bad) == total and total > 1:
        return f"all {total} runs"
    return "; ".join(_where(r) for r in bad)


def _check_sources(runs: Sequence[RunSpec], num_points: int, env: dict[str, str], offline: bool,
                   out: Out) -> list[Failure]:
    failures, remote = [], set()
    problems: dict[tuple[str, str, str], list[RunSpec]] = {}
    for run in runs:
        m, d = run.config.model, run.config.data
        for field, value, revision in (("model.name", m.name, m.revision), ("data.dataset", d.dataset, d.revision)):
            if field == "model.name" and value in PRESETS:
                continue
            msg = _source_problem(field, value, revision, env, offline)
            if msg:
                problems.setdefault((field, value, msg), []).append(run)
            elif not _is_local(value):
                remote.add(value)
    for (field, _, msg), bad in problems.items():
        failures.append(Failure(_group(bad, num_points), field, msg))
    for value in sorted(remote):
        out(f"preflight: {value} is a hub id{' found in the local cache' if offline else '; the job downloads it (not checked here)'}")
    return failures


def _source_problem(field: str, value: str, revision: str | None, env: dict[str, str], offline: bool) -> str | None:
    if _is_local(value):
        try:
            path = Path(value).expanduser()
        except RuntimeError:
            return f"{value}: no such user's home directory; give an absolute path or one relative to the grid file"
        if not path.is_dir():
            return f"local folder {value} does not exist; create it or fix the path (./ and ../ are relative to the grid file)"
        if field == "model.name" and not (path / "config.json").is_file():
            return f"{value} has no config.json; give a save_pretrained folder, a preset ({', '.join(PRESETS)}) or a hub id"
        return None
    if not offline:
        return None
    cache = _hub_cache(env)
    if field == "model.name":
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(value, "config.json", cache_dir=cache, revision=revision)
        if isinstance(hit, str):
            return None
        kind, cli = "model", f"huggingface-cli download {value}"
    else:
        # A dataset's files are not known in advance (try_to_load_from_cache needs a file name), so look
        # for its snapshot folder in the hub cache, or for the datasets library's own processed cache.
        snaps = cache / f"datasets--{value.replace('/', '--')}" / "snapshots"
        ds_cache = Path(env.get("HF_DATASETS_CACHE") or Path(env.get("HF_HOME") or Path.home() / ".cache/huggingface") / "datasets")
        if (snaps.is_dir() and any(snaps.iterdir())) or (ds_cache / value.replace("/", "___")).is_dir():
            return None
        kind, cli = "dataset", f"huggingface-cli download --repo-type dataset {value}"
    return (f"hub {kind} {value!r} is not in the local cache {cache} and the job runs offline (HF_HUB_OFFLINE=1); "
            f"run `python submit.py prefetch GRID --cache {cache.parent}` on the login node first "
            f"(or: HF_HOME={cache.parent} {cli})")


def _check_packing(spec: GridSpec, profile: SiteProfile, runs: Sequence[RunSpec], gpu_mem_gb: float | None) -> list[Failure]:
    """runs_per_gpu runs must fit in one GPU's memory (hpc.packing: measured or estimated footprints)."""
    if not spec.slurm.gpus_per_node:
        return []
    source = "the GPUs seen here" if gpu_mem_gb is not None else f"profile {profile.name}"
    problem = packing.check_memory(runs, spec.slurm.runs_per_gpu, gpu_mem_gb or profile.gpu_mem_gb, source)
    return [] if problem is None else [Failure("grid", *problem)]


# ---------------------------------------------------------------------------- output folder
def _check_output(spec: GridSpec) -> list[Failure]:
    """Writable where the grid folder will be, without creating it (nothing is written before the
    preflight passes): probe the nearest existing folder with a temp file, then remove it."""
    target = spec.grid_dir
    while not target.exists() and target != target.parent:
        target = target.parent
    fix = "set output_root in the grid file to a folder you can write, e.g. /scratch/$USER/runs"
    if not target.is_dir():
        return [Failure("grid", "output_root", f"{target} is a file, not a folder, so {spec.grid_dir} cannot be created; {fix}")]
    try:
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".preflight-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return [Failure("grid", "output_root", f"cannot write in {target} ({e.strerror}) to create {spec.grid_dir}; {fix}")]
    return []


# ---------------------------------------------------------------------------- Slurm
def _run(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def parse_slurm_minutes(text: str) -> int | None:
    """Slurm time limit in whole minutes ("30:00" = 30, "2:00:00" = 120, "1-00:00:00" = 1440); None = no limit."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m = (parts + [0, 0])[:2]
    elif len(parts) == 1 or len(parts) == 2:  # MM
        h, m = 0, parts[0]
    else:  # HH:MM:SS
        h, m = parts[0], parts[1]
    return days * 1440 + h * 60 + m  # seconds dropped: a limit of 5:30 allows a 5-minute request, not 6


def _partitions() -> dict[str, dict[str, Any]] | None:
    proc = _run(["sinfo", "-h", "-o", "%P|%l|%D|%c|%m|%G"])
    if proc is None or proc.returncode != 0:
        return None
    parts: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        name, limit, nodes, cpus, mem, gres = (line.split("|") + [""] * 6)[:6]
        parts[name.rstrip("*")] = {"default": name.endswith("*"), "max_min": parse_slurm_minutes(limit),
                                   "nodes": int(nodes or 0), "node_desc": f"{cpus} CPUs, {mem} MB, gres {gres}"}
    return parts


def sbatch_test_args(params: dict[str, Any]) -> list[str]:
    """`sbatch --test-only` with the options the array job will have (the same dict submitit gets)."""
    flags = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
             "nodes": "nodes", "ntasks_per_node": "ntasks-per-node", "gpus_per_node": "gpus-per-node",
             "cpus_per_task": "cpus-per-task", "mem": "mem", "time": "time"}
    args = ["sbatch", "--test-only"] + [f"--{flag}={params[k]}" for k, flag in flags.items() if k in params]
    for key, value in params.get("additional_parameters", {}).items():
        args.append(f"--{key}" if value is True else f"--{key}={value}")
    return args + ["--wrap", "true"]


_SBATCH_ERRORS = [  # stderr pattern -> (grid field, fix)
    (r"invalid partition", "slurm.partition", "use one of the partitions `sinfo -s` lists"),
    (r"invalid account", "slurm.account", "use an account of yours (`sacctmgr show assoc user=$USER`)"),
    (r"invalid qos", "slurm.qos", "use a QOS your account may use (`sacctmgr show assoc user=$USER format=qos`)"),
    (r"invalid feature", "slurm.constraint", "use features the nodes have (`sinfo -o '%N %f'`)"),
    (r"time limit", "slurm.time_min", "lower time_min to the partition's limit (`sinfo -o '%P %l'`)"),
    (r"node configuration is not available|more processors|gres",
     "slurm.nodes/gpus_per_node/cpus_per_task/mem_gb", "ask for what one node of the partition has (`sinfo -o '%P %c %m %G'`)"),
]


def _check_slurm(spec: GridSpec, profile: SiteProfile) -> list[Failure]:
    params = executor_parameters(spec, profile)
    r, failures = spec.slurm, []
    parts = _partitions()
    if parts is None:
        return [Failure("grid", "slurm", "sinfo failed or is not installed; run on a Slurm login node, "
                                         "or pass --no-preflight-sbatch to skip the Slurm checks")]
    name = params.get("partition") or next((n for n, p in parts.items() if p["default"]), None)
    if name and "," not in str(name):
        part = parts.get(str(name))
        if part is None:
            return [Failure("grid", "slurm.partition", f"partition {name!r} does not exist; use one of {', '.join(parts)}")]
        if part["max_min"] is not None and r.time_min > part["max_min"]:
            failures.append(Failure("grid", "slurm.time_min", f"{r.time_min} min is over partition {name}'s MaxTime of "
                                    f"{part['max_min']} min (the job would pend forever); use at most {part['max_min']} "
                                    "(a longer run continues after requeues) or another partition"))
        if r.nodes > part["nodes"]:
            failures.append(Failure("grid", "slurm.nodes", f"{r.nodes} nodes, but partition {name} has {part['nodes']}; "
                                    f"use at most {part['nodes']}"))
    proc = _run(sbatch_test_args(params))
    if proc is None:
        return failures + [Failure("grid", "slurm", "sbatch not found; run on a Slurm login node or pass --no-preflight-sbatch")]
    if proc.returncode != 0:
        for line in [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()] or [f"exit {proc.returncode}"]:
            field, fix = next(((f, fx) for pat, f, fx in _SBATCH_ERRORS if re.search(pat, line, re.IGNORECASE)), ("slurm", ""))
            failures.append(Failure("grid", field, f"sbatch --test-only: {line}" + (f"; {fix}" if fix else "")))
    return failures
