"""A locally pre-trained ViT-B/16 for the grid benchmark: the offline stand-in for the hub checkpoint.

The reference fine-tunes google/vit-base-patch16-224 (ImageNet-21k/1k weights). The GPU host has no
hub, and a randomly initialised ViT-B/16 trained for 5 epochs on 1,034 images is not a fine-tune: it is
training from scratch, whose final accuracy swings with the last bits of the arithmetic (run 36: up to
0.045 between two runs of one Gemini configuration). So the benchmark first pre-trains its own
backbone on a RELATED BUT DIFFERENT task and then fine-tunes from it exactly as from the hub:

* data: the synthetic generator with another seed (images disjoint from the fine-tuning data), with
  the two disease classes merged: "diseased" against "healthy" (2 classes). The backbone learns what a
  leaf and a lesion look like; telling angular leaf spot from bean rust is left to the fine-tune;
* training: ``python -m vit_train`` (hybrid_parallel, AdamW, bf16, ``model.deterministic``), the HF
  export plus the preset's image processor written as a model folder;
* use: the grid's ``model.name`` is that folder, so every grid run goes through ``from_pretrained``
  with a new 3-class head (``ignore_mismatched_sizes``): the hub path of a real job.

Idempotent: a folder whose ``pretrain.json`` records the same parameters is reused, which is also why
the weights' sha256 is recorded (the same parameters on the same GPU model give the same file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vit_train.config import apply_dotted

DISEASED, HEALTHY = "diseased", "healthy"
PARAMS_FILE = "pretrain.json"


def relabel_two_classes(src: Path, dst: Path) -> Path:
    """The beans-schema dataset at ``src`` with labels (diseased, healthy), saved to ``dst``."""
    import datasets

    dd = datasets.load_from_disk(str(src))
    names = dd["train"].features["labels"].names
    healthy = names.index(HEALTHY)
    features = dd["train"].features.copy()
    features["labels"] = datasets.ClassLabel(names=[DISEASED, HEALTHY])
    out = datasets.DatasetDict({
        split: ds.cast_column("image", datasets.Image(decode=False))
                 .map(lambda row: {"labels": int(row["labels"] == healthy)}, features=features, load_from_cache_file=False)
                 .cast_column("image", datasets.Image())
        for split, ds in dd.items()})
    out.save_to_disk(str(dst))
    return dst


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_folder(work: Path, params: dict[str, Any], env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Build (or reuse) the pre-trained model folder under ``work``; returns its record.

    ``params``: preset, num_train, image_size, epochs, batch_size, lr, seed, data_seed, num_proc,
    extra (dotted overrides of the run, e.g. model.cuda_graph)."""
    model_dir = work / "model"
    record_file = work / PARAMS_FILE
    if record_file.is_file() and (model_dir / "model.safetensors").is_file():
        record = json.loads(record_file.read_text())
        if record.get("params") == params:
            return {**record, "reused": True}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vit_train.synthetic", str(work / "beans3"), "--num-train", str(params["num_train"]),
                    "--num-validation", "200", "--num-test", "1", "--image-size", str(params["image_size"]),
                    "--seed", str(params["data_seed"]), "--num-proc", str(params["num_proc"])],
                   cwd=cwd, env=env, check=True, capture_output=True, timeout=timeout)
    data = relabel_two_classes(work / "beans3", work / "beans2")
    shutil.rmtree(work / "beans3")
    t_data = time.perf_counter() - t0
    run_dir = work / "run"
    cfg = {"model": {"name": params["preset"], "deterministic": True},
           "data": {"dataset": str(data), "cache_dir": str(work / "cache"), "num_workers": 0},
           "optim": {"epochs": params["epochs"], "batch_size": params["batch_size"], "lr": params["lr"],
                     "weight_decay": 0.05, "warmup_ratio": 0.1},
           "parallel": {"plugin": "hybrid_parallel"}, "precision": "bf16", "seed": params["seed"],
           "checkpoint": {"export_hf": True}, "logging": {"tensorboard": False}, "output_dir": str(run_dir)}
    cfg = apply_dotted(cfg, params.get("extra", {}))
    (work / "pretrain.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "vit_train", "--config", str(work / "pretrain.yaml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    (work / "pretrain.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"pre-training exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    (run_dir / "final_model").rename(model_dir)
    result = json.loads((run_dir / "result.json").read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    record = {"params": params, "model_dir": str(model_dir), "weights_sha256": sha256_of(model_dir / "model.safetensors"),
              "pretrain_eval_accuracy": result.get("eval_accuracy"), "data_seconds": t_data,
              "train_seconds": time.perf_counter() - t0 - t_data}
    record_file.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False}
