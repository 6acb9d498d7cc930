"""Export the trained model in Hugging Face format (config.json + model.safetensors).

The booster writes the full, unsharded weights with HF key names from whatever layout trained
them (TP/PP/ZeRO shards are gathered); rank 0 loads them into a fresh ViTForImageClassification
and calls ``save_pretrained``, so ``from_pretrained(final_model)`` needs no ColossalAI. The folder
appears complete or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from vit_train.distributed.process_group import barrier


def load_sharded_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Read a booster.save_model(shard=True, use_safetensors=True) folder (safe format, no pickle)."""
    from safetensors.torch import load_file

    index = next(folder.glob("*.index.json"), None)
    files = sorted({*json.loads(index.read_text())["weight_map"].values()}) if index else [
        p.name for p in folder.glob("*.safetensors")
    ]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def export_hf_model(trainer: Any, out_dir: Path) -> None:
    """Collective: all ranks take part in gathering the weights."""
    from transformers import ViTForImageClassification

    from vit_train.model import build_image_processor

    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    if trainer.env.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    trainer.booster.save_model(trainer.model, str(tmp / "shards"), shard=True, use_safetensors=True)
    barrier()
    if trainer.env.is_main:
        model = ViTForImageClassification(trainer.model_config)
        state = load_sharded_state_dict(tmp / "shards")
        missing, unexpected = model.load_state_dict(state, strict=False)
        # The pooler is not part of ViTForImageClassification; anything else missing is a bug.
        if missing or unexpected:
            raise RuntimeError(f"export: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        model.save_pretrained(str(tmp / "hf"), safe_serialization=True)
        # With its image processor the folder loads like a hub checkpoint (model.name: <folder>).
        build_image_processor(trainer.cfg.model).save_pretrained(str(tmp / "hf"))
        shutil.rmtree(tmp / "shards")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (tmp / "hf").rename(out_dir)
        shutil.rmtree(tmp)
    barrier()
