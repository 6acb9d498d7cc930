"""Several grid points per GPU (``slurm.runs_per_gpu: K``): which runs share a task, and do they fit.

A ViT-B/16 run at batch 8-32 uses a few GiB of an 80-141 GiB GPU and leaves most of its compute idle
between kernels, so K one-GPU runs are trained at once on one GPU, one process each
(:class:`hpc.packed.PackedJob`); the array then has ceil(N/K) tasks.

Packing is decided at submit time from the runs being (re)submitted, and changes nothing about a run:
its signature, folder and config are those of the unpacked run, and its run.json records the task
that ran it and its neighbours. Runs are dealt round-robin (task i gets runs i, i+T, i+2T, ... of T
tasks), so a 3x3 batch-size x lr grid puts one run of each batch size in each task and the tasks end
at about the same time.

Memory. Preflight refuses a K whose runs would not fit in one GPU (the site profile's ``gpu_mem_gb``,
or the GPUs ``--local`` sees) and names the largest K that does. A run's footprint is, in order of
preference, measured (the peak ``mem_gib`` its metrics.jsonl recorded in an earlier attempt) or
estimated by :func:`estimate_gib`; K runs need K times the largest footprint of the grid, within
``USABLE_FRACTION`` of the GPU's memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vit_train.config import RunConfig
from vit_train.model_shapes import KNOWN_HUB_SHAPES, PRESETS

T = TypeVar("T")

# ---------------------------------------------------------------------------- the estimate
# Source: BENCHMARKS.md runs 28-29 (one H100, ViT-B/16 224 px, bf16, HybridParallelPlugin and Gemini
# alike): torch.cuda.max_memory_allocated 14.9 GiB at batch 256 and 28.4 GiB at batch 512, so
# 1.40 GiB fixed + 54 MiB per image. The fixed part is the training state, 16 bytes per parameter
# (fp32 master weights 4 + 16-bit weights 2 + 16-bit gradients 2 + Adam moments 8; in fp32: weights 4
# + gradients 4 + moments 8) x 86 M parameters = 1.28 GiB, plus the head and buffers. The per-image
# part is the activations kept for the backward pass: 31 bytes per (layer x token x hidden unit) in
# 16-bit, i.e. the textbook count for a transformer layer without the attention-score matrix that
# SDPA does not store (32 sbh bytes: Korthikanti et al. 2022, "Reducing Activation Recomputation in
# Large Transformer Models"); fp32 keeps twice that (fp32 reference: 30.1 GiB at 256). Each process
# adds its CUDA context and the caching allocator's slack, which max_memory_allocated leaves out:
# CONTEXT_GIB plus SLACK_FRACTION. For batch 8-32 this gives 2.6-4.1 GiB per ViT-B/16 run, against
# 2-3 GiB measured per packed run on an H200 (issue 18): the estimate errs on the safe side.
STATE_BYTES_PER_PARAM = 16
ACT_BYTES_PER_UNIT = {"bf16": 32, "fp16": 32, "fp32": 64}
CONTEXT_GIB = 0.6
SLACK_FRACTION = 0.15
USABLE_FRACTION = 0.9
"""Share of a GPU's memory the packed runs may plan for (fragmentation, other tenants, NCCL buffers)."""


@dataclass(frozen=True)
class Footprint:
    gib: float
    how: str
    """"measured in <run>" or "estimated: <formula values>"."""


def model_dims(name: str) -> dict[str, int] | None:
    """hidden size, layers, intermediate size, image and patch size of a preset, a known hub model or a
    local folder (its config.json); None when unknown offline."""
    raw: Mapping[str, Any] | None = PRESETS.get(KNOWN_HUB_SHAPES.get(name, name))
    if raw is None and (Path(name) / "config.json").is_file():
        try:
            raw = json.loads((Path(name) / "config.json").read_text())
        except (OSError, ValueError):
            raw = None
    if raw is None:
        return None
    hidden = int(raw.get("hidden_size", 768))

    def side(v: Any) -> int:
        return int(v[0] if isinstance(v, (list, tuple)) else v)

    return {"hidden": hidden, "layers": int(raw.get("num_hidden_layers", 12)),
            "intermediate": int(raw.get("intermediate_size", 4 * hidden)),
            "image": side(raw.get("image_size", 224)), "patch": side(raw.get("patch_size", 16))}


def estimate_gib(config: RunConfig) -> Footprint | None:
    """GPU memory of one one-GPU run (see the constants above); None for a model of unknown shape."""
    d = model_dims(config.model.name)
    if d is None:
        return None
    h, layers = d["hidden"], d["layers"]
    tokens = (d["image"] // d["patch"]) ** 2 + 1
    params = layers * (4 * h * h + 2 * h * d["intermediate"]) + 3 * d["patch"] ** 2 * h
    act_unit = ACT_BYTES_PER_UNIT.get(config.precision, 64)
    state = params * STATE_BYTES_PER_PARAM / 2**30
    acts = config.optim.batch_size * layers * tokens * h * act_unit / 2**30
    gib = CONTEXT_GIB + (state + acts) * (1 + SLACK_FRACTION)
    return Footprint(gib, f"estimated: {params / 1e6:.0f} M params x {STATE_BYTES_PER_PARAM} B + batch "
                          f"{config.optim.batch_size} x {layers} layers x {tokens} tokens x {h} x {act_unit} B "
                          f"({config.precision}), +{SLACK_FRACTION:.0%} + {CONTEXT_GIB} GiB context")


def measured_gib(run_dir: Path) -> Footprint | None:
    """Peak memory an earlier attempt of the run recorded (metrics.jsonl ``mem_gib``: allocated on the GPU)."""
    peak = None
    try:
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "train" and isinstance(rec.get("mem_gib"), (int, float)):
                peak = max(peak or 0.0, float(rec["mem_gib"]))
    except OSError:
        return None
    if peak is None:
        return None
    return Footprint(CONTEXT_GIB + peak * (1 + SLACK_FRACTION), f"measured: peak {peak:.2f} GiB allocated in {Path(run_dir).name}")


def check_memory(runs: Sequence[Any], runs_per_gpu: int, gpu_mem_gb: float | None, source: str) -> tuple[str, str] | None:
    """None when ``runs_per_gpu`` runs fit in one GPU (or nothing can be checked); else the failure's
    (field, message), naming the largest runs_per_gpu that fits. ``runs`` are hpc.grid.RunSpec."""
    if runs_per_gpu <= 1 or gpu_mem_gb is None or not runs:
        return None
    prints = []
    for run in runs:
        fp = measured_gib(run.run_dir) or estimate_gib(run.config)
        if fp is None:
            return None  # a model of unknown shape: nothing to go by (the job's own OOM would tell)
        prints.append((fp, run))
    worst, run = max(prints, key=lambda p: p[0].gib)
    usable = gpu_mem_gb * USABLE_FRACTION
    if runs_per_gpu * worst.gib <= usable:
        return None
    fits = int(usable // worst.gib)
    fix = f"use runs_per_gpu: {fits} or less" if fits >= 1 else "a single run does not fit: use a GPU with more memory"
    return ("slurm.runs_per_gpu", f"{runs_per_gpu} runs of up to {worst.gib:.1f} GiB each (run {run.name}, "
            f"{worst.how}) need {runs_per_gpu * worst.gib:.1f} GiB, more than {usable:.1f} GiB "
            f"({USABLE_FRACTION:.0%} of gpu_mem_gb={gpu_mem_gb:g} of {source}); {fix}")


# ---------------------------------------------------------------------------- packing
def num_tasks(num_runs: int, runs_per_gpu: int) -> int:
    return math.ceil(num_runs / max(runs_per_gpu, 1))


def pack(runs: Sequence[T], runs_per_gpu: int) -> list[list[T]]:
    """ceil(N/K) groups of at most K runs, dealt round-robin in grid order (sizes differ by at most 1)."""
    n = num_tasks(len(runs), runs_per_gpu)
    return [list(runs[i::n]) for i in range(n)] if runs else []


def neighbours(groups: Sequence[Sequence[Any]]) -> dict[str, tuple[str, ...]]:
    """Run name -> the names of the other runs of its group (empty when not packed)."""
    return {r.name: tuple(o.name for o in g if o is not r) for g in groups for r in g}
