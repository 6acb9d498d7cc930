"""``python -m vit_train.bench grid`` end to end on CPU, as CI runs it (tiny model, 48 images, 1 epoch, variant b),
fine-tuning a backbone it pre-trains first (90 images, 1 epoch: the GPU benchmark's path, small).

No speed is asserted: CPU numbers mean nothing. What is checked: the synthetic data and the grid file
are made, the runs go through ``submit --local`` packed (``runs_per_gpu`` 2, one process each), the
JSON has the variant's wall time, time to the printed table, GPU-seconds and every run's accuracy,
and the markdown is written and printed last; ``python -m vit_train.bench`` keeps its own flags.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.train_utils import REPO, child_env


def test_grid_bench_runs_variant_b_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gb"
    cmd = [sys.executable, "-m", "vit_train.bench", "grid", "--variants", "b", "--out", str(out), "--model", "tiny",
           "--image-size", "32", "--num-train", "48", "--num-validation", "12", "--epochs", "1", "--batch-sizes", "8",
           "--lrs", "1e-3,2e-3", "--runs-per-gpu", "2", "--no-warmup", "--init", "pretrained",
           "--pretrain-num-train", "90", "--pretrain-epochs", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "grid_bench.json").read_text())
    assert report["meta"]["device"] == "cpu" and report["meta"]["substitutions"]
    (b,) = report["variants"]
    assert b["name"] == "b" and b["exit_code"] == 0 and b["gpus"] == 0 and b["gpu_seconds"] == 0
    assert 0 < b["wall_to_table_s"] <= b["wall_s"]
    assert [(r["batch_size"], r["lr"], r["status"]) for r in b["runs"]] == [(8, 1e-3, "completed"), (8, 2e-3, "completed")]
    assert all(r["eval_accuracy"] is not None and r["avg_train_loss"] is not None for r in b["runs"])
    grid = yaml.safe_load((out / "grids" / "bench_b.yaml").read_text())
    assert grid["slurm"]["runs_per_gpu"] == 2 and grid["base"]["optim"]["weight_decay"] == 0.5
    # every run fine-tunes the backbone pre-trained first (2 classes) through from_pretrained, a new 3-class head
    pre = report["meta"]["pretrain"]
    model_dir = Path(pre["model_dir"])
    assert grid["base"]["model"] == {"name": str(model_dir), "deterministic": True}
    assert json.loads((model_dir / "config.json").read_text())["id2label"] == {"0": "diseased", "1": "healthy"}
    assert (model_dir / "preprocessor_config.json").is_file() and len(pre["weights_sha256"]) == 64
    run_cfg = json.loads((out / "runs" / "bench_b" / next(iter(
        d for d in sorted((out / "runs" / "bench_b").iterdir()) if d.is_dir())).name / "config.json").read_text())
    assert run_cfg["model"]["name"] == str(model_dir)
    log = (out / "bench_b.log").read_text()
    assert "-> local-" in log and "2 of 2 runs finished" in log
    table = (out / "grid_bench.md").read_text()
    assert "| b | Gemini, packed (runs_per_gpu 2) |" in table
    assert proc.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the markdown is printed last
    help_text = subprocess.run([sys.executable, "-m", "vit_train.bench", "--help"], cwd=REPO, env=child_env(),
                               capture_output=True, text=True, timeout=120, check=True).stdout
    assert "--batch-size" in help_text and "--configs" in help_text  # the speed benchmark, unchanged
