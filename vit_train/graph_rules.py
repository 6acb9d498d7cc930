"""Which runs can train each step as one CUDA graph (``model.cuda_graph``); RunConfig calls these.

A captured graph replays the GPU work of one step and nothing else: no Python, no host reads. So a
layout qualifies only when every operation of its step stays on the GPU and none of its Python state
changes between steps (:mod:`vit_train.graph_step` captures it). What is refused, and why:

- ``gemini``, ``low_level_zero``, ``hybrid_parallel`` with ``zero_stage > 0``: ZeRO's gradient hooks
  and bucket bookkeeping run Python inside the backward (and Gemini moves chunks between devices);
- ``pp_size > 1``: the pipeline schedule is Python driving point-to-point messages per micro-batch;
- ``fp16``: dynamic loss scaling reads the overflow flag on the host and skips steps from Python;
- ``hybrid_parallel`` in fp32: its fp32 optimizer (``HybridParallelNaiveOptimizer``) reads the
  gradient norm back to the host every step (the bf16 one keeps it on the GPU: ``patches.amp_loops``);
- ``optim.optimizer=hybrid_adam``: ColossalAI's HybridAdam has no capturable step; torch's fused
  AdamW with ``capturable=True`` has;
- no CUDA device.

Several data-parallel ranks qualify: torch DDP's reducer (bucket hooks, asynchronous all-reduces,
completion callbacks) is host machinery, so a graphed run is boosted without DDP and averages its
gradients with one all-reduce inside the captured step (:mod:`vit_train.distributed.grad_sync`).

``model.compile`` combines with it (inductor's kernels are captured like any other). No torch import
here: the Slurm preflight runs these checks on the login node.
"""

from __future__ import annotations

from typing import Any

from vit_train.config_tools import fail

SUPPORTED = ("model.cuda_graph supports parallel.plugin=torch_ddp (fp32 or bf16) and hybrid_parallel with "
             "zero_stage 0 and pp_size 1 (any tp_size and data-parallel size, bf16), with optim.optimizer=adamw on "
             "CUDA GPUs")


def _refuse(field_name: str, value: Any, reason: str) -> None:
    fail(field_name, value, f"cannot run with model.cuda_graph=true ({reason}); {SUPPORTED}; change it or set "
         "model.cuda_graph: false")


def check_config(cfg: Any) -> None:
    """The world-independent rules (from RunConfig.__post_init__)."""
    if not cfg.model.cuda_graph:
        return
    p = cfg.parallel
    if p.plugin in ("gemini", "low_level_zero"):
        _refuse("parallel.plugin", p.plugin, "ZeRO/Gemini run Python hooks and host synchronisation inside "
                "every step (gradient buckets, chunk moves), which a CUDA graph cannot capture")
    if p.zero_stage > 0:
        _refuse("parallel.zero_stage", p.zero_stage, "ZeRO's gradient buckets are Python hooks in the backward")
    if p.pp_size > 1:
        _refuse("parallel.pp_size", p.pp_size, "the pipeline schedule is Python sending micro-batches between stages")
    if cfg.precision == "fp16":
        _refuse("precision", "fp16", "fp16's dynamic loss scaling reads the overflow flag on the host and skips steps "
                "from Python; use bf16")
    if p.plugin == "hybrid_parallel" and cfg.precision == "fp32":
        _refuse("precision", "fp32", "hybrid_parallel's fp32 optimizer reads the gradient norm back to the host every "
                "step (its bf16 optimizer keeps it on the GPU); use bf16")
    if cfg.optim.optimizer != "adamw":
        _refuse("optim.optimizer", cfg.optim.optimizer, "ColossalAI's HybridAdam has no capturable step; use adamw "
                "(torch's fused AdamW with capturable=True)")


def check_world(cfg: Any, world_size: int, device_type: str) -> None:
    """The rules that need the job's size and device (from RunConfig.check_world)."""
    if not cfg.model.cuda_graph:
        return
    if device_type != "cuda":
        fail("model.cuda_graph", True, f"needs a CUDA GPU (this job runs on {device_type}); set model.cuda_graph: false")
