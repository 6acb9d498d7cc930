"""Named model presets and a cheap lookup of a model's shape (heads, layers).

Config validation must know ``num_attention_heads`` and ``num_hidden_layers`` to reject a bad
tensor/pipeline layout before anything is queued, without importing torch or touching the network.
Presets answer from this table, local folders from their ``config.json``, hub ids from the local
Hugging Face cache when present (offline-safe); otherwise the check is deferred to run time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    num_attention_heads: int
    num_hidden_layers: int
    hidden_size: int
    image_size: int


# Presets are built from a ViTConfig with random weights (no hub needed). "tiny" is for CPU tests and
# the demo; "vit_b16" / "vit_l16" / "vit_h14" are the sizes used by GPU benchmarks.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, num_channels=3,
    ),
    "vit_b16": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        image_size=224, patch_size=16, num_channels=3,
    ),
    "vit_l16": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        image_size=224, patch_size=16, num_channels=3,
    ),
    "vit_h14": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
        image_size=224, patch_size=14, num_channels=3,
    ),
}

# Hub models whose shape is public and stable; lets the login node validate layouts offline.
KNOWN_HUB_SHAPES: dict[str, str] = {
    "google/vit-base-patch16-224": "vit_b16",
    "google/vit-base-patch16-224-in21k": "vit_b16",
    "google/vit-large-patch16-224": "vit_l16",
    "google/vit-huge-patch14-224-in21k": "vit_h14",
}


def _from_dict(cfg: dict[str, Any]) -> ModelShape:
    image_size = cfg.get("image_size", 224)
    return ModelShape(
        num_attention_heads=int(cfg["num_attention_heads"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
    )


def _hub_cache_config(repo_id: str) -> Path | None:
    """Find config.json of a hub model in the local HF cache without importing huggingface_hub."""
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    snaps = hub / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snaps.is_dir():
        return None
    for snap in sorted(snaps.iterdir()):
        if (snap / "config.json").is_file():
            return snap / "config.json"
    return None


def model_shape(name: str) -> ModelShape | None:
    """Shape of a preset, local folder or cached hub model; None when it cannot be known offline."""
    if name in PRESETS:
        return _from_dict(PRESETS[name])
    if name in KNOWN_HUB_SHAPES:
        return _from_dict(PRESETS[KNOWN_HUB_SHAPES[name]])
    local = Path(name) / "config.json"
    if local.is_file():
        return _from_dict(json.loads(local.read_text()))
    cached = _hub_cache_config(name) if "/" in name and not Path(name).exists() else None
    if cached is not None:
        return _from_dict(json.loads(cached.read_text()))
    return None
