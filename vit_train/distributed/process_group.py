"""Process-group setup from the environment: torchrun, Slurm's srun, or a plain single process.

torchrun exports RANK/WORLD_SIZE/MASTER_*; under ``srun`` only SLURM_* exist, so they are translated
by the one pure reader in :mod:`vit_train.distributed.slurm_env`. A single ``python -m vit_train`` gets a world of one
on a free local port. ColossalAI then picks nccl on CUDA and gloo on CPU by itself.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    source: str
    """Where the ranks came from: torchrun | slurm | single."""

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_env(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """Variables torch.distributed needs, and their source; pure apart from picking a free port."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return {}, "torchrun"
    from vit_train.distributed.slurm_env import read_slurm_env, torch_env

    cluster = read_slurm_env(env)
    if cluster is not None and int(env.get("SLURM_NTASKS", "1")) >= 1 and "SLURM_PROCID" in env:
        return torch_env(cluster), "slurm"
    return {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }, "single"


def init_distributed(seed: int) -> DistEnv:
    """Initialise torch.distributed + ColossalAI once per process; a second call returns the same env."""
    import colossalai

    extra, source = resolve_env(os.environ)
    os.environ.update(extra)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        # One task per GPU: under srun every task may see all of the node's GPUs.
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        colossalai.launch_from_torch(seed=seed, verbose=False)
    env = DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, source)
    log.info("rank %d/%d (local %d) on %s, ranks from %s", env.rank, env.world_size, local_rank, device, source)
    return env


def several_ranks() -> bool:
    """A process group of two or more ranks exists (collectives have something to do)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    # Not for a world of one: on NCCL the first collective creates the communicator (a few tenths of
    # a second at start-up) with nothing to wait for.
    if several_ranks():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64 so counts and sums stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if several_ranks():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if any rank set the flag (so all ranks take the same branch)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    if several_ranks():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_module(module: torch.nn.Module, src: int = 0, group: Any = None) -> None:
    """Give every rank of ``group`` (default: all) the parameters and buffers of global rank ``src``,
    in place (nothing to do alone)."""
    if not several_ranks() or dist.get_world_size(group) == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t, src, group=group)


def broadcast_object(obj: object, src: int = 0) -> object:
    if not several_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
