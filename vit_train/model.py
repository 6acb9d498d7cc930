"""Build the ViT classifier and its image processor from a ModelConfig.

Two sources, one interface:

- a preset (``vit_train.model_shapes.PRESETS``): a ViTConfig with random weights, for CPU tests and
  GPU benchmarks where pretrained weights do not matter; its processor mirrors
  google/vit-base-patch16-224's (mean/std 0.5, bilinear) at the preset's image size;
- a hub id or a local folder: ``from_pretrained`` with a new classification head sized for the
  dataset's labels (the backbone keeps its pretrained weights).

The caller seeds torch before :func:`build_model`, so the random head (and preset weights) are the
same on every rank and every re-run. Labels are never padded: a tensor-parallel layout that needs a
divisible head size is the plugin's business, not the model's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)
from transformers.image_utils import PILImageResampling
from transformers.modeling_utils import no_init_weights

from vit_train.config import ModelConfig
from vit_train.model_shapes import PRESETS

logger = logging.getLogger(__name__)


def _label_maps(class_names: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    if not class_names:
        raise ValueError("class_names is empty: the dataset's label column has no classes")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names}")
    id2label = dict(enumerate(class_names))
    return id2label, {name: i for i, name in id2label.items()}


def build_image_processor(cfg: ModelConfig) -> ViTImageProcessor:
    """The processor that turns images into the model's pixel_values (resize + rescale + normalise).

    Pretrained models load their own saved settings; ``use_fast=False`` pins the PIL path, whose output
    the pre-processing cache key describes (the torchvision "fast" processor resizes differently).
    """
    if cfg.name in PRESETS:
        size = PRESETS[cfg.name]["image_size"]
        return ViTImageProcessor(
            do_resize=True,
            size={"height": size, "width": size},
            resample=PILImageResampling.BILINEAR,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    return AutoImageProcessor.from_pretrained(cfg.name, revision=cfg.revision, use_fast=False)


def build_model(cfg: ModelConfig, class_names: list[str], device: torch.device | None = None) -> ViTForImageClassification:
    """A ViT classifier with exactly ``len(class_names)`` outputs and readable id2label/label2id.

    ``device``: where a preset's random weights are created and initialised (the trainer's device:
    ViT-B/16's initialisation takes 0.5 s on a CPU core, milliseconds on a GPU, and the plugin would
    move the weights there anyway). The same seed gives other values on a GPU than on the CPU, and
    may on another GPU model (the trainer broadcasts rank 0's). Pretrained models load on the CPU."""
    id2label, label2id = _label_maps(class_names)
    if cfg.name in PRESETS:
        config = ViTConfig(
            **PRESETS[cfg.name],
            num_labels=len(class_names),
            id2label=id2label,
            label2id=label2id,
            attn_implementation=cfg.attn_implementation,
        )
        # torch's default init of every Linear/Conv is overwritten by transformers' _init_weights
        # anyway: skip it (a third of the build time of ViT-B on the CPU, part of start-up).
        with torch.device(device or "cpu"), no_init_weights():
            model = ViTForImageClassification(config)
        model.init_weights()
        return model

    # ignore_mismatched_sizes: a 1000-class ImageNet head cannot load into a 3-class one; transformers
    # then initialises the head fresh (from the caller's seed) and loads everything else.
    base = ViTConfig.from_pretrained(cfg.name, revision=cfg.revision)
    model = ViTForImageClassification.from_pretrained(
        cfg.name,
        revision=cfg.revision,
        num_labels=len(class_names),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        attn_implementation=cfg.attn_implementation,
    )
    # A head of the same size but for other classes would load silently and start from wrong
    # predictions; keep it only when it was trained on these very labels (resuming a fine-tune).
    base_names = [base.id2label.get(i, base.id2label.get(str(i))) for i in range(base.num_labels)]
    if base.num_labels == len(class_names) and base_names != class_names:
        logger.info("new classification head: %s has labels %s, the dataset %s", cfg.name, base_names, class_names)
        model._init_weights(model.classifier)
    return model


def save_local_model(preset: str, out_dir: str | Path, num_labels: int = 1000) -> Path:
    """Write a randomly initialised preset as a "pretrained" model folder (config.json,
    model.safetensors, preprocessor_config.json), so the from_pretrained + new-head path can be
    exercised offline exactly as with a hub checkpoint. Seed torch first for reproducible weights.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: use one of {', '.join(PRESETS)}")
    out = Path(out_dir)
    config = ViTConfig(**PRESETS[preset], num_labels=num_labels)
    ViTForImageClassification(config).save_pretrained(out, safe_serialization=True)
    build_image_processor(ModelConfig(name=preset)).save_pretrained(out)
    return out
