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
from vit_train import graph_rules
from vit_train.distributed.layout import ParallelConfig
from vit_train.config_sections import PRECISIONS, DataConfig, ModelConfig, OptimConfig
from vit_train.model_shapes import ModelShape, model_shape


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
    hparams: tuple[str, ...] = ()
    """Dotted config keys shown in TensorBoard's HParams view next to the final metrics; empty = the
    keys that identify a run (IDENTIFYING_HPARAMS). A grid fills it with its axes plus those."""

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
    "model.cuda_graph",
    "model.deterministic",
    "checkpoint.every_n_steps",
    "checkpoint.keep_last",
    "checkpoint.export_hf",
    "logging.log_every_n_steps",
    "logging.tensorboard",
    "logging.hparams",
}
# What TensorBoard's HParams view shows of a run besides what its grid varies (logging.hparams
# empty): the model, the reference table's batch size and learning rate, the schedule length, the
# parallel layout and the precision. Paths, columns and operational fields would only be noise there.
IDENTIFYING_HPARAMS = (
    "model.name",
    "optim.batch_size",
    "optim.lr",
    "optim.epochs",
    "parallel.plugin",
    "parallel.tp_size",
    "parallel.pp_size",
    "parallel.zero_stage",
    "precision",
)


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
        graph_rules.check_config(self)
        if self.logging.hparams:  # the default config has none, so valid_dotted_keys() does not recurse
            valid = valid_dotted_keys()
            unknown = [k for k in self.logging.hparams if k not in valid]
            if unknown:
                fail("logging.hparams", list(self.logging.hparams), f"unknown key(s) {unknown}; list dotted config keys "
                     f"such as optim.lr or parallel.tp_size (valid: {', '.join(valid)}), or leave it empty")

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
        graph_rules.check_world(self, world_size, device_type)
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

    def hparam_values(self) -> dict[str, Any]:
        """What TensorBoard's HParams view shows of this run: logging.hparams (or IDENTIFYING_HPARAMS)."""
        flat = self.flat()
        return {k: flat[k] for k in dict.fromkeys(self.logging.hparams or IDENTIFYING_HPARAMS)}


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
