"""One frozen, validated configuration per fine-tuning run.

Every section is a kw-only frozen dataclass whose ``__post_init__`` rejects bad values with a
message naming the field, the value seen and the fix. Checks that need the world size or the
device (``world_size % (tp*pp)``, fp16 on CPU, per-rank batch divisibility) live in
:meth:`RunConfig.check_world`, which the launcher and the Slurm preflight both call.

Dict form: ``{"model": {...}, "data": {...}, "optim": {...}, "parallel": {...}, ...}``; grid files
and the CLI address fields with dotted keys (``optim.lr``). Unknown keys fail and list the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from vit_train.config_tools import (
    ConfigError,
    build_section,
    coerce,
    divisors,
    fail,
    field_type,
    flatten,
    to_plain,
)
from vit_train.distributed.layout import ParallelConfig
from vit_train.model_shapes import ModelShape, model_shape


PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("adamw", "hybrid_adam")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = "tiny"
    """A preset (see vit_train.model_shapes.PRESETS: built from config, random init) or a hub id /
    local folder loaded with from_pretrained and given a new classification head."""
    revision: str | None = None
    """Hub revision (commit or tag) to pin for from_pretrained; None = the hub's default branch."""
    attn_implementation: str = "sdpa"
    """Attention kernel for transformers ViT: "sdpa" (fused, fast on GPU) or "eager"."""
    compile: bool = False
    """torch.compile the model's forward/backward (GPU speed; the first steps pay the compile time)."""
    fast_forwards: bool = True
    """One Q/K/V product per attention layer and the patch embedding as one product
    (vit_train.kernels.fast_vit): same parameters and maths, a tenth more images/s on an H100. Not applied
    under tensor parallelism (sharded Q/K/V); Gemini keeps the stock patch embedding."""
    cls_only_last_layer: bool = True
    """With fast_forwards: the classifier reads only the [CLS] token, so the last layer computes
    keys/values for every token and the rest for [CLS] only; same logits and gradients, about 6
    percent less work for ViT-B/16. Not with pipeline parallelism (ColossalAI replaces that forward)."""
    fused_mlp: bool = True
    """With fast_forwards and compile: each MLP's first product + exact GELU as one operator whose
    backward computes the GELU gradient and the bias gradient in one pass (vit_train.kernels.fused_mlp, a
    Triton kernel on CUDA); same maths, +2 percent images/s on an H100 (same-run A/B)."""

    def __post_init__(self) -> None:
        if not self.name:
            fail("model.name", self.name, "give a preset name, a hub id or a local model folder")
        if self.attn_implementation not in ("sdpa", "eager"):
            fail("model.attn_implementation", self.attn_implementation, "use 'sdpa' or 'eager'")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "AI-Lab-Makerere/beans"
    """Hub dataset id, a local `save_to_disk` folder, or an image folder (class name per subfolder)."""
    revision: str | None = None
    """Hub revision of the dataset to pin; None = default branch."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str = "validation"
    """Split evaluated after each epoch (whole split, no shuffle, nothing dropped)."""
    image_column: str | None = None
    """Image column; None = detect the column of type Image."""
    label_column: str | None = None
    """Label column; None = detect the column of type ClassLabel."""
    cache_dir: str | None = None
    """Root of the pre-processed tensor cache shared by ranks and grid runs; None = $VIT_TRAIN_CACHE
    or ~/.cache/vit_train."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    max_train_samples: int | None = None
    """Use only the first N training samples (quick runs); None = all."""
    max_eval_samples: int | None = None
    """Use only the first N evaluation samples; None = all."""

    def __post_init__(self) -> None:
        if not self.dataset:
            fail("data.dataset", self.dataset, "give a hub id, a save_to_disk folder or an image folder")
        if self.num_workers < 0:
            fail("data.num_workers", self.num_workers, "use 0 (load in the main process) or more")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                fail(f"data.{name}", v, "use a positive count or leave it unset for all samples")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    epochs: int = 5
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when reached first); None = epochs only."""
    batch_size: int = 32
    """Global batch size: images per optimizer step summed over data-parallel ranks, so a grid point
    means the same training whatever the layout."""
    lr: float = 2e-4
    """Peak learning rate (after warm-up)."""
    lr_scaling: str = "none"
    """Scale lr with the data-parallel size: none | linear (lr*dp) | sqrt (lr*sqrt(dp)). Logged and
    recorded in the resolved config when applied; off unless asked."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    warmup_ratio: float = 0.0
    """Fraction of all steps spent in linear warm-up before cosine decay."""
    optimizer: str = "adamw"
    """adamw (torch, fused on CUDA) or hybrid_adam (ColossalAI; required by Gemini)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            fail("optim.epochs", self.epochs, "use 1 or more")
        if self.max_steps is not None and self.max_steps < 1:
            fail("optim.max_steps", self.max_steps, "use a positive step count or leave it unset")
        if self.batch_size < 1:
            fail("optim.batch_size", self.batch_size, "use a positive global batch size")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            fail("optim.lr", self.lr, "use a positive finite learning rate such as 2e-4")
        if self.lr_scaling not in LR_SCALINGS:
            fail("optim.lr_scaling", self.lr_scaling, f"use one of {', '.join(LR_SCALINGS)}")
        if not (0 <= self.weight_decay < 10):
            fail("optim.weight_decay", self.weight_decay, "use a value in [0, 10)")
        if not (0 <= self.warmup_ratio < 1):
            fail("optim.warmup_ratio", self.warmup_ratio, "use a fraction in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            fail("optim.optimizer", self.optimizer, f"use one of {', '.join(OPTIMIZERS)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail("optim.betas", self.betas, "use two values in [0, 1), e.g. [0.9, 0.999]")
        for name in ("eps", "max_grad_norm", "weight_decay", "warmup_ratio"):
            if not math.isfinite(getattr(self, name)):
                fail(f"optim.{name}", getattr(self, name), "use a finite number")
        if not self.eps > 0:
            fail("optim.eps", self.eps, "use a small positive number such as 1e-8")
        if self.max_grad_norm < 0:
            fail("optim.max_grad_norm", self.max_grad_norm, "use 0 (no clipping) or a positive norm")


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    every_n_steps: int = 0
    """Save a step-NNNNNN/ checkpoint every N optimizer steps; 0 = only at the end (and on preemption)."""
    keep_last: int = 2
    """Keep the newest k complete checkpoints; older ones are deleted after a new one completes."""
    export_hf: bool = True
    """At the end, export the model in Hugging Face format (config.json + safetensors) to final_model/."""

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            fail("checkpoint.every_n_steps", self.every_n_steps, "use 0 (end only) or a positive interval")
        if self.keep_last < 1:
            fail("checkpoint.keep_last", self.keep_last, "keep at least 1 checkpoint to resume from")


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    log_every_n_steps: int = 10
    """Progress line and TensorBoard scalars every N steps."""
    eval_every_n_epochs: int = 1
    """Evaluate on the eval split every N epochs (and always after the last)."""
    tensorboard: bool = True
    """Write TensorBoard event files under the run folder's tb/."""

    def __post_init__(self) -> None:
        if self.log_every_n_steps < 1:
            fail("logging.log_every_n_steps", self.log_every_n_steps, "use 1 or more")
        if self.eval_every_n_epochs < 1:
            fail("logging.eval_every_n_epochs", self.eval_every_n_epochs, "use 1 or more")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "parallel": ParallelConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}
# Fields that change *how* a run is executed or observed but not what it trains: left out of the
# run signature, so changing them never turns a finished run into a "new" one.
NON_SEMANTIC = {
    "output_dir",
    "data.cache_dir",
    "data.num_workers",
    "model.compile",
    "model.fast_forwards",
    "model.cls_only_last_layer",
    "model.fused_mlp",
    "checkpoint.every_n_steps",
    "checkpoint.keep_last",
    "checkpoint.export_hf",
    "logging.log_every_n_steps",
    "logging.tensorboard",
}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """What to fine-tune."""
    data: DataConfig = field(default_factory=DataConfig)
    """What to fine-tune on."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Schedule, batch and optimizer."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """ColossalAI plugin and parallel layout."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When and how checkpoints are written."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress lines and TensorBoard."""
    precision: str = "fp32"
    """fp32 | fp16 | bf16 (fp16 needs a GPU; gemini needs fp16 or bf16)."""
    seed: int = 42
    """Seed for model head init, data order and dropout."""
    output_dir: str = "runs/default"
    """Run folder: checkpoints, TensorBoard, result.json, resolved config."""

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                fail(name, getattr(self, name), f"must be a {cls.__name__}; build it with RunConfig.from_dict")
        if self.precision not in PRECISIONS:
            fail("precision", self.precision, f"use one of {', '.join(PRECISIONS)}")
        p, o = self.parallel, self.optim
        if p.plugin == "gemini":
            if self.precision == "fp32":
                fail("precision", "fp32", "gemini trains in fp16 or bf16 only; set precision: bf16")
            if o.optimizer != "hybrid_adam":
                fail("optim.optimizer", o.optimizer, "gemini needs optimizer 'hybrid_adam' (it shards ColossalAI's HybridAdam)")
        if self.model.compile and (p.plugin == "gemini" or p.pp_size > 1):
            fail("model.compile", True, "is not supported with gemini or pp_size > 1 (their wrappers re-enter the "
                  "model's forward per chunk/stage); set model.compile: false")
        if p.plugin == "hybrid_parallel" and p.zero_stage > 0 and self.precision == "fp32":
            fail("precision", "fp32", "hybrid_parallel with zero_stage > 0 needs fp16 or bf16")
        if p.pp_size > 1 and p.num_microbatches is not None and o.batch_size % p.num_microbatches:
            fail(
                "optim.batch_size",
                o.batch_size,
                f"must be divisible by parallel.num_microbatches={p.num_microbatches}",
            )
        if p.pp_size > 1 and p.microbatch_size is not None and o.batch_size % p.microbatch_size:
            fail("optim.batch_size", o.batch_size, f"must be divisible by parallel.microbatch_size={p.microbatch_size}")
        shape = model_shape(self.model.name)
        if shape is not None:
            self._check_shape(shape)

    def _check_shape(self, shape: ModelShape) -> None:
        p = self.parallel
        if shape.num_attention_heads % p.tp_size:
            ok = ", ".join(map(str, divisors(shape.num_attention_heads)))
            fail(
                "parallel.tp_size",
                p.tp_size,
                f"does not divide num_attention_heads={shape.num_attention_heads} of {self.model.name}; use one of {ok}",
            )
        if p.pp_size > shape.num_hidden_layers:
            fail(
                "parallel.pp_size",
                p.pp_size,
                f"is larger than the {shape.num_hidden_layers} layers of {self.model.name}; use at most {shape.num_hidden_layers}",
            )

    # ------------------------------------------------------------------ world-dependent checks
    def check_world(self, world_size: int, device_type: str) -> None:
        """Checks that need the job's size and device; raised before any process group is built."""
        p = self.parallel
        if world_size % p.model_parallel_size:
            ok = [n for n in range(p.model_parallel_size, 4 * p.model_parallel_size + 1, p.model_parallel_size)]
            fail(
                "world_size",
                world_size,
                f"is not divisible by tp_size*pp_size={p.model_parallel_size}; use a multiple such as {ok}",
            )
        dp = self.dp_size(world_size)
        if self.optim.batch_size % dp:
            fail("optim.batch_size", self.optim.batch_size, f"must be divisible by the data-parallel size {dp}")
        per_rank = self.optim.batch_size // dp
        if p.pp_size > 1:
            mb = p.num_microbatches or 0
            if p.num_microbatches is not None and per_rank % p.num_microbatches:
                fail(
                    "parallel.num_microbatches",
                    mb,
                    f"must divide the per-rank batch {per_rank} (batch_size {self.optim.batch_size} / dp {dp})",
                )
            if p.microbatch_size is not None and per_rank % p.microbatch_size:
                fail(
                    "parallel.microbatch_size",
                    p.microbatch_size,
                    f"must divide the per-rank batch {per_rank} (batch_size {self.optim.batch_size} / dp {dp})",
                )
        if device_type != "cuda":
            if self.precision == "fp16":
                fail("precision", "fp16", "fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
            if p.plugin == "gemini":
                fail("parallel.plugin", "gemini", "gemini needs CUDA GPUs; on CPU use low_level_zero or hybrid_parallel")

    def dp_size(self, world_size: int) -> int:
        return world_size // self.parallel.model_parallel_size

    def effective_lr(self, world_size: int) -> float:
        dp = self.dp_size(world_size)
        scale = {"none": 1.0, "linear": float(dp), "sqrt": math.sqrt(dp)}[self.optim.lr_scaling]
        return self.optim.lr * scale

    # ------------------------------------------------------------------ dict / dotted-key forms
    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"run config must be a mapping of sections, got {type(d).__name__}")
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; valid top-level keys: {', '.join(sorted(top))}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in SECTIONS:
                kwargs[key] = build_section(key, SECTIONS[key], value)
            else:
                kwargs[key] = coerce(key, field_type(cls, key), value)
        return cls(**kwargs)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "RunConfig":
        """Apply dotted-key overrides (``{"optim.lr": 1e-4}``) and re-validate."""
        return RunConfig.from_dict(apply_dotted(self.to_dict(), overrides))

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. for TensorBoard HParams and run signatures."""
        return flatten(self.to_dict())


def valid_dotted_keys() -> list[str]:
    return sorted(flatten(RunConfig().to_dict()))


def apply_dotted(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict ``base`` with dotted-key overrides applied; unknown keys fail."""
    out = to_plain(dict(base))
    valid = set(valid_dotted_keys())
    for key, value in overrides.items():
        if key not in valid:
            close = [v for v in sorted(valid) if v.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
