"""The model, data and optimisation sections of a run config (the root is :mod:`vit_train.config`).

Frozen kw-only dataclasses validated at construction, torch-free so that the login node and the
grid expansion can build and check them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vit_train.config_tools import fail


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
    cuda_graph: bool = False
    """Train each step as one CUDA graph, replayed after 3 eager steps (vit_train.graph_step); layouts: vit_train.graph_rules."""
    deterministic: bool = False
    """Deterministic GPU kernels (vit_train.determinism): the same run twice gives bitwise the same
    losses and weights; an operator without a deterministic kernel then raises."""

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


