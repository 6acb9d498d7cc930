"""The parallel layout of a run: which ColossalAI Booster plugin, and its TP x PP x DP / ZeRO settings.

Owned by the distributed package (the plugin factory, :mod:`vit_train.distributed.plugins`, is its
only reader besides the run-config checks that need the model's shape or the world size).
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_train.config_tools import fail

PLUGINS = ("torch_ddp", "low_level_zero", "gemini", "hybrid_parallel")
"""The Booster plugins a run can use."""


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    plugin: str = "torch_ddp"
    """ColossalAI Booster plugin: torch_ddp | low_level_zero | gemini | hybrid_parallel."""
    zero_stage: int = 0
    """ZeRO stage: low_level_zero takes 1 or 2; hybrid_parallel takes 0, 1 or 2; others ignore it (0)."""
    tp_size: int = 1
    """Tensor-parallel size (hybrid_parallel only); must divide the model's attention heads."""
    pp_size: int = 1
    """Pipeline-parallel size (hybrid_parallel only); at most the model's layer count."""
    num_microbatches: int | None = None
    """Pipeline micro-batches per step (pp_size > 1); give this or microbatch_size, not both."""
    microbatch_size: int | None = None
    """Pipeline micro-batch size in images (pp_size > 1)."""
    enable_all_optimization: bool = False
    """hybrid_parallel: turn on ColossalAI's fused kernels / flash attention where available."""
    gemini_placement: str = "static"
    """gemini: static (offload_optim_frac decides) or auto (memory-tracer driven)."""
    offload_optim_frac: float = 0.0
    """gemini static placement: fraction of optimizer state kept on CPU."""

    def __post_init__(self) -> None:
        if self.plugin not in PLUGINS:
            fail("parallel.plugin", self.plugin, f"use one of {', '.join(PLUGINS)}")
        if self.tp_size < 1 or self.pp_size < 1:
            fail("parallel.tp_size/pp_size", (self.tp_size, self.pp_size), "use sizes >= 1")
        if self.plugin != "hybrid_parallel" and (self.tp_size, self.pp_size) != (1, 1):
            fail(
                "parallel.plugin",
                self.plugin,
                f"tp_size={self.tp_size}, pp_size={self.pp_size} need plugin 'hybrid_parallel'",
            )
        if self.plugin == "low_level_zero" and self.zero_stage not in (1, 2):
            fail("parallel.zero_stage", self.zero_stage, "low_level_zero takes zero_stage 1 or 2")
        if self.plugin == "hybrid_parallel" and self.zero_stage not in (0, 1, 2):
            fail("parallel.zero_stage", self.zero_stage, "hybrid_parallel takes zero_stage 0, 1 or 2")
        if self.plugin in ("torch_ddp", "gemini") and self.zero_stage != 0:
            fail("parallel.zero_stage", self.zero_stage, f"{self.plugin} has no zero_stage; leave it 0")
        if self.pp_size > 1 and self.zero_stage == 2:
            fail("parallel.zero_stage", 2, "ZeRO-2 cannot be combined with pp_size > 1; use zero_stage 0 or 1")
        if self.pp_size > 1:
            if (self.num_microbatches is None) == (self.microbatch_size is None):
                fail(
                    "parallel.num_microbatches",
                    self.num_microbatches,
                    "pp_size > 1 needs exactly one of num_microbatches or microbatch_size",
                )
        for name in ("num_microbatches", "microbatch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                fail(f"parallel.{name}", v, "use a positive value")
        if self.gemini_placement not in ("static", "auto"):
            fail("parallel.gemini_placement", self.gemini_placement, "use 'static' or 'auto'")
        if not (0.0 <= self.offload_optim_frac <= 1.0):
            fail("parallel.offload_optim_frac", self.offload_optim_frac, "use a fraction in [0, 1]")

    @property
    def model_parallel_size(self) -> int:
        return self.tp_size * self.pp_size
