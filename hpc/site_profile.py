"""Site profiles (slurm_templates/profiles/<name>.yaml) and the Slurm options a grid gets from them.

Shared by the preflight, which checks a grid against its site before anything is queued, and the
submission, which queues it; neither imports the other for these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpc.grid import GridSpec
from vit_train.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO_ROOT / "slurm_templates" / "profiles"
PROFILE_KEYS = ("description", "setup", "sbatch", "env", "gpu_mem_gb")
# Options left to the profile as site defaults; the grid's slurm: section wins when it sets them.
PROFILE_DEFAULT_KEYS = ("partition", "account", "qos", "constraint")
# Options the grid's slurm: section (or submitit itself) owns; a profile setting them would be ignored
# or would silently change what the grid asked for, so it is refused.
GRID_OWNED_SBATCH = ("nodes", "ntasks", "ntasks-per-node", "gpus", "gpus-per-node", "gres", "cpus-per-task", "mem",
                     "mem-per-cpu", "mem-per-gpu", "time", "signal", "array", "output", "error", "job-name",
                     "open-mode", "requeue", "no-requeue", "wrap")

class ProfileError(ConfigError):
    """A site profile is missing or invalid; the message names the file, the key and the fix."""


@dataclass(frozen=True, kw_only=True)
class SiteProfile:
    """slurm_templates/profiles/<name>.yaml: how jobs start on one site."""

    name: str
    description: str
    """One line shown by --dry-run."""
    setup: tuple[str, ...] = ()
    """Shell lines before srun (module load, source venv)."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Extra #SBATCH options; partition/account/qos/constraint are defaults the grid may override."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables exported before the setup lines."""
    gpu_mem_gb: float | None = None
    """Memory of one GPU of the site in GB (GiB, as nvidia-smi prints it); preflight checks that
    ``slurm.runs_per_gpu`` runs fit in it. None = not checked."""

    def setup_lines(self) -> list[str]:
        # Double quotes: $USER/$HOME expand in the job's shell, as a site admin would expect.
        exports = [f'export {k}="{_dq(v)}"' for k, v in self.env.items()]
        return exports + list(self.setup)

    def extra_sbatch(self) -> dict[str, Any]:
        # `key: false` means "off": submitit would write --key=False.
        return {k: v for k, v in self.sbatch.items() if k not in PROFILE_DEFAULT_KEYS and v is not False}


def _dq(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


def available_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in profile_dir.glob("*.yaml"))


def load_profile(name: str, profile_dir: Path = PROFILE_DIR) -> SiteProfile:
    """Read and check a profile; ``{repo}`` in env values and setup lines becomes the repository root."""
    path = Path(profile_dir) / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"profile={name!r}: no {path}; available: {', '.join(available_profiles(profile_dir)) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: must be a mapping with keys {', '.join(PROFILE_KEYS)}")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ProfileError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(PROFILE_KEYS)}")
    setup, sbatch, env = data.get("setup") or [], data.get("sbatch") or {}, data.get("env") or {}
    if not isinstance(setup, list) or not all(isinstance(x, str) for x in setup):
        raise ProfileError(f"{path}: setup must be a list of shell lines, e.g. ['module load cuda']")
    if not isinstance(sbatch, dict) or not all(isinstance(v, (str, int, float, bool)) for v in sbatch.values()):
        raise ProfileError(f"{path}: sbatch must map option names to values, e.g. {{partition: gpu, exclusive: true}}")
    sbatch = {str(k).replace("_", "-"): v for k, v in sbatch.items()}
    owned = sorted(set(sbatch) & set(GRID_OWNED_SBATCH))
    if owned:
        raise ProfileError(f"{path}: sbatch option(s) {owned} are set per grid; put them in the grid's slurm: section")
    if not isinstance(env, dict) or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) for k in env) \
            or not all(isinstance(v, (str, int, float, bool)) for v in env.values()):
        raise ProfileError(f"{path}: env must map variable names to scalar values, e.g. {{OMP_NUM_THREADS: '1'}}")
    gpu_mem = data.get("gpu_mem_gb")
    if gpu_mem is not None and (isinstance(gpu_mem, bool) or not isinstance(gpu_mem, (int, float)) or gpu_mem <= 0):
        raise ProfileError(f"{path}: gpu_mem_gb={gpu_mem!r}: give the memory of one GPU in GB, e.g. 80 for an H100")
    repo = str(REPO_ROOT)
    return SiteProfile(
        name=name,
        description=str(data.get("description") or ""),
        setup=tuple(line.replace("{repo}", repo) for line in setup),
        sbatch=sbatch,
        env={str(k): str(v).replace("{repo}", repo) for k, v in env.items()},
        gpu_mem_gb=None if gpu_mem is None else float(gpu_mem),
    )


def executor_parameters(spec: GridSpec, profile: SiteProfile) -> dict[str, Any]:
    """Keyword arguments of submitit's ``SlurmExecutor.update_parameters`` for this grid."""
    r = spec.slurm
    params: dict[str, Any] = {
        "job_name": spec.name,
        "time": r.time_min,
        "nodes": r.nodes,
        "ntasks_per_node": r.tasks_per_node,  # one task (rank) per GPU: srun starts the ranks, not torchrun
        "cpus_per_task": r.cpus_per_task,
        "mem": f"{r.mem_gb}GB",
        "signal_delay_s": r.signal_delay_s,
        "array_parallelism": r.array_parallelism,
        "setup": profile.setup_lines(),
        # One dead rank leaves the others blocked in a collective until the time limit: let srun kill them.
        "srun_args": ["--kill-on-bad-exit=1"],
        # --requeue explicitly: sites with JobRequeue=0 would otherwise refuse submitit's `scontrol requeue`.
        "additional_parameters": {"requeue": True, **profile.extra_sbatch()},
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    for key in PROFILE_DEFAULT_KEYS:
        value = getattr(r, key) or profile.sbatch.get(key)
        if value:
            params[key] = value
    return params
