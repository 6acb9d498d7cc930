"""The benchmark's configurations: plain-PyTorch baselines and every plugin/layout through the Trainer.

:mod:`vit_train.bench.runner` runs them, each in its own process (:mod:`vit_train.bench.worker`);
``--configs`` picks among :data:`CONFIG_NAMES`. A configuration is a name, what it measures, and the
RunConfig overrides (or the plain-PyTorch switches) that make it; :func:`skip_reason` says why one
cannot run on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vit_train.patches.patching import AS_SHIPPED_ENV


@dataclass(frozen=True)
class BenchConfig:
    name: str
    kind: str
    """torch (plain PyTorch baseline) | trainer (the project's Trainer and a ColossalAI plugin)."""
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """RunConfig dotted keys on top of the bench's base config (trainer kind)."""
    compile: bool = False
    autocast: bool = True
    """torch kind: bf16 autocast; False is the fp32 reference (TF32 off)."""
    bf16_weights: bool = False
    """torch kind: bf16 weights with an fp32 master copy for the optimizer, instead of autocast."""
    graph: bool = False
    """torch kind: the whole step captured as one CUDA graph (vit_train.graph_step.CapturedStep)."""
    nproc: int = 1
    needs_cuda: bool = False
    steps: int | None = None
    """Timed steps when not --steps (the slow CPU-offload configuration)."""
    measure_sync: bool = False
    """Also time the loop with the multi-rank stop check's collective and host sync every step."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the worker (e.g. ColossalAI as shipped, for a same-run A/B)."""

    @property
    def model_parallel(self) -> int:
        return int(self.overrides.get("parallel.tp_size", 1)) * int(self.overrides.get("parallel.pp_size", 1))


def _t(name: str, description: str, **kw: Any) -> BenchConfig:
    return BenchConfig(name=name, kind="trainer", description=description, **kw)


DDP = {"parallel.plugin": "torch_ddp"}
ZERO = {"parallel.plugin": "low_level_zero"}
HYBRID = {"parallel.plugin": "hybrid_parallel"}
GEMINI = {"parallel.plugin": "gemini", "optim.optimizer": "hybrid_adam"}
AS_SHIPPED = {AS_SHIPPED_ENV: "1"}
GRAPH = {"model.cuda_graph": True}

CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("fp32_reference", "torch", "plain PyTorch fp32, TF32 off (loss reference)", autocast=False, steps=5),
    BenchConfig("torch_eager", "torch", "plain PyTorch, bf16 autocast, fused AdamW, SDPA"),
    BenchConfig("torch_compile", "torch", "plain PyTorch + torch.compile", compile=True),
    BenchConfig("torch_compile_bf16", "torch", "plain PyTorch + compile, bf16 weights, fp32 master weights",
                compile=True, bf16_weights=True),
    BenchConfig("torch_graph", "torch", "plain PyTorch eager kernels, the whole step as one CUDA graph (capturable "
                "fused AdamW, lr as a device tensor)", graph=True, needs_cuda=True),
    _t("ddp", "TorchDDPPlugin, bf16 autocast", overrides=DDP, measure_sync=True),
    _t("ddp_as_shipped", "TorchDDPPlugin, ColossalAI as shipped (VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1: torch DDP "
       "around the one-rank model)", overrides=DDP, env=AS_SHIPPED),
    _t("ddp+compile", "TorchDDPPlugin + compile", overrides=DDP, compile=True),
    _t("ddp+compile_stock", "TorchDDPPlugin + compile, transformers' own ViT forwards (model.fast_forwards off)",
       overrides={**DDP, "model.fast_forwards": False}, compile=True),
    _t("ddp+graph", "TorchDDPPlugin, each step one CUDA graph (model.cuda_graph)", overrides={**DDP, **GRAPH}, needs_cuda=True),
    _t("ddp+compile+graph", "TorchDDPPlugin + compile + CUDA graph", overrides={**DDP, **GRAPH}, compile=True, needs_cuda=True),
    _t("zero1", "LowLevelZeroPlugin stage 1, bf16", overrides={**ZERO, "parallel.zero_stage": 1}),
    _t("zero2", "LowLevelZeroPlugin stage 2, bf16", overrides={**ZERO, "parallel.zero_stage": 2}),
    _t("zero1+compile", "LowLevelZeroPlugin stage 1 + compile", overrides={**ZERO, "parallel.zero_stage": 1},
       compile=True),
    _t("zero2+compile", "LowLevelZeroPlugin stage 2 + compile", overrides={**ZERO, "parallel.zero_stage": 2},
       compile=True),
    _t("hybrid", "HybridParallelPlugin tp1 pp1, bf16", overrides=HYBRID),
    _t("hybrid+fused_kernels", "HybridParallelPlugin + enable_all_optimization",
       overrides={**HYBRID, "parallel.enable_all_optimization": True}),
    _t("hybrid_zero1", "HybridParallelPlugin zero_stage 1, bf16", overrides={**HYBRID, "parallel.zero_stage": 1}),
    _t("hybrid_as_shipped", "HybridParallelPlugin tp1 pp1, ColossalAI's optimizer loops as shipped "
       "(VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1)", overrides=HYBRID, env=AS_SHIPPED),
    _t("hybrid+compile", "HybridParallelPlugin + compile", overrides=HYBRID, compile=True),
    _t("hybrid+compile_full_last", "HybridParallelPlugin + compile, last layer on every token "
       "(model.cls_only_last_layer off)", overrides={**HYBRID, "model.cls_only_last_layer": False}, compile=True),
    _t("hybrid+compile_unfused_mlp", "HybridParallelPlugin + compile, MLP product/GELU/bias gradient as "
       "separate kernels (model.fused_mlp off)", overrides={**HYBRID, "model.fused_mlp": False}, compile=True),
    _t("hybrid+compile_ddp_wrapped", "HybridParallelPlugin + compile, ColossalAI as shipped "
       "(VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1: torch DDP around the one-rank model, per-parameter optimizer loops)",
       overrides=HYBRID, compile=True, env=AS_SHIPPED),
    _t("hybrid+graph", "HybridParallelPlugin tp1 pp1, each step one CUDA graph", overrides={**HYBRID, **GRAPH}, needs_cuda=True),
    _t("hybrid+graph_sync1", "hybrid+graph plus the gradient all-reduce of a data-parallel run, over one GPU "
       "(what the graph adds for dp > 1, less the communication)", overrides={**HYBRID, **GRAPH}, needs_cuda=True,
       env={"VIT_TRAIN_BENCH_ONE_RANK_SYNC": "1"}),
    _t("hybrid+compile+graph", "HybridParallelPlugin + compile + CUDA graph", overrides={**HYBRID, **GRAPH}, compile=True,
       needs_cuda=True),
    _t("gemini", "GeminiPlugin static, HybridAdam, bf16", overrides=GEMINI, needs_cuda=True),
    _t("gemini_as_shipped", "GeminiPlugin as ColossalAI ships it (VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1: "
       "asynchronous gradient reduction on one rank)", overrides=GEMINI, needs_cuda=True, env=AS_SHIPPED),
    _t("gemini_stock_forwards", "GeminiPlugin, transformers' own ViT forwards (model.fast_forwards off)",
       overrides={**GEMINI, "model.fast_forwards": False}, needs_cuda=True),
    _t("gemini_full_last", "GeminiPlugin, last layer on every token (model.cls_only_last_layer off)",
       overrides={**GEMINI, "model.cls_only_last_layer": False}, needs_cuda=True),
    _t("gemini_offload", "GeminiPlugin, optimizer state on CPU (offload_optim_frac 1)",
       overrides={**GEMINI, "parallel.offload_optim_frac": 1.0}, needs_cuda=True, steps=5),
    _t("ddp_x2", "TorchDDPPlugin, 2 ranks", overrides=DDP, nproc=2),
    _t("ddp_x2+graph", "TorchDDPPlugin, 2 ranks, each step one CUDA graph (gradient all-reduce inside it, no DDP)",
       overrides={**DDP, **GRAPH}, nproc=2, needs_cuda=True),
    _t("hybrid_dp2", "HybridParallelPlugin tp1, 2 data-parallel ranks (torch DDP)", overrides=HYBRID, nproc=2),
    _t("hybrid_dp2+graph", "HybridParallelPlugin tp1, 2 data-parallel ranks, one CUDA graph per rank (gradient "
       "all-reduce inside it, no DDP)", overrides={**HYBRID, **GRAPH}, nproc=2, needs_cuda=True),
    _t("zero2_x2", "LowLevelZeroPlugin stage 2, 2 ranks", overrides={**ZERO, "parallel.zero_stage": 2}, nproc=2),
    _t("hybrid_tp2", "HybridParallelPlugin tp2", overrides={**HYBRID, "parallel.tp_size": 2}, nproc=2),
    _t("hybrid_tp2+graph", "HybridParallelPlugin tp2, one CUDA graph per rank (the TP all-reduces inside it)",
       overrides={**HYBRID, "parallel.tp_size": 2, **GRAPH}, nproc=2, needs_cuda=True),
    _t("hybrid_pp2", "HybridParallelPlugin pp2, 4 micro-batches",
       overrides={**HYBRID, "parallel.pp_size": 2, "parallel.num_microbatches": 4}, nproc=2),
)
CONFIG_NAMES = [c.name for c in CONFIGS]


def skip_reason(c: BenchConfig, on_cuda: bool, num_gpus: int) -> str | None:
    """Why a configuration cannot run here, or None."""
    if c.needs_cuda and not on_cuda:
        return "needs a CUDA GPU"
    if c.compile and not on_cuda:
        return "torch.compile on CPU spends minutes compiling C++ for numbers that mean nothing"
    if on_cuda and c.nproc > num_gpus:
        return f"needs {c.nproc} GPUs, {num_gpus} present"
    if not on_cuda and c.nproc > 1:
        return "multi-process layouts on CPU are covered by tests/test_train_layouts.py"
    return None
