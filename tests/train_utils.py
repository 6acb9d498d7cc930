"""Helpers for tests that run the real training CLI in real processes (gloo on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def tiny_vit(num_labels: int) -> Any:
    """A real transformers ViT small enough for multi-process CPU tests (2 layers, width 32, 32 px
    images in 8 px patches), with the same weights on every call and rank (seed 0)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, image_size=32, patch_size=8,
                                               num_labels=num_labels))


def same_on_all_ranks(params: Any) -> bool:
    """True on every rank when every rank holds rank 0's values of these tensors (collective)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().float().flatten() for p in params])
    first = flat.clone()
    dist.broadcast(first, 0)
    same = torch.tensor(int(torch.equal(first, flat)))
    dist.all_reduce(same, op=dist.ReduceOp.MIN)  # every rank's answer, not rank 0's own copy
    return bool(same)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_cli(args: list[str], nproc: int = 1, timeout: float = 300, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m vit_train`` alone (nproc=1) or under torchrun (nproc>1)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "vit_train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", "-m", "vit_train", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or child_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out.append((rec["step"], rec["loss"]))
    return out


def eval_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


def base_args(dataset: Path, cache: Path, out: Path, **over: Any) -> list[str]:
    """A small fp32 run on the synthetic data with a per-step loss record."""
    opts: dict[str, Any] = {
        "model.name": "tiny",
        "data.dataset": str(dataset),
        "data.cache_dir": str(cache),
        "data.num_workers": 0,
        "optim.batch_size": 8,
        "optim.lr": 1e-3,
        "optim.epochs": 1,
        "optim.max_steps": 4,
        "optim.max_grad_norm": 0,
        "logging.log_every_n_steps": 1,
        "checkpoint.export_hf": False,
        "output_dir": str(out),
    }
    opts.update(over)
    args: list[str] = []
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return args


def run_torchrun_child(script: Path, nproc: int, timeout: float) -> dict[str, Any]:
    """Run a test file as its own ``torchrun`` job on CPU (gloo) and return the JSON of the one
    ``CHILD_RESULT`` line its rank 0 prints (see :func:`child_main`); fails with the output otherwise."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")]
    assert len(lines) == 1, out[-6000:]
    result: dict[str, Any] = json.loads(lines[0][len("CHILD_RESULT "):])
    return result


def child_main(body: Any) -> None:
    """The child side of :func:`run_torchrun_child`: rank 0 prints ``CHILD_RESULT <json of body()>``;
    every rank leaves through clean_exit (1 after printing the traceback of a failure)."""
    from vit_train.distributed.shutdown import clean_exit

    try:
        result = body()
        if int(os.environ.get("RANK", "0")) == 0:
            print("CHILD_RESULT " + json.dumps(result), flush=True)
    except BaseException:
        import traceback

        traceback.print_exc()
        clean_exit(1)
    clean_exit(0)
