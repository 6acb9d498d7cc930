"""The real CLI end to end on CPU: learns the synthetic task, exports a loadable HF model, writes
TensorBoard scalars and HParams, exits 0 every time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.train_utils import REPO, base_args, child_env, run_cli


@pytest.fixture(scope="module")
def learn_run(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> tuple[Path, Path, float]:
    from vit_train.synthetic import make_beans_like

    data = make_beans_like(tmp_path_factory.mktemp("learn") / "beans", num_train=600, num_validation=150,
                           num_test=12, image_size=32, seed=1)
    out = tmp_path_factory.mktemp("learn_run") / "run"
    t0 = time.perf_counter()
    run_cli(base_args(data, data_cache, out, **{
        "optim.batch_size": 32, "optim.lr": 2e-3, "optim.epochs": 10, "optim.max_steps": "null",
        "optim.warmup_ratio": 0.1, "optim.weight_decay": 0.05, "optim.max_grad_norm": 1.0,
        "logging.log_every_n_steps": 10, "checkpoint.export_hf": True,
    }))
    return data, out, time.perf_counter() - t0


def test_tiny_vit_learns_synthetic_beans_above_chance(learn_run) -> None:
    _, out, seconds = learn_run
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["eval_samples"] == 150
    # 3 balanced classes: chance is 0.33; 150 samples put 0.55 about 5 standard errors above it.
    assert result["eval_accuracy"] >= 0.55, result
    assert seconds < 60, f"took {seconds:.0f}s"


def test_exported_model_loads_and_predicts_the_same(learn_run, data_cache: Path) -> None:
    from transformers import ViTForImageClassification

    from vit_train.config import DataConfig
    from vit_train.data import prepare
    from vit_train.model import build_image_processor
    from vit_train.config import ModelConfig

    data, out, _ = learn_run
    model = ViTForImageClassification.from_pretrained(out / "final_model").eval()
    assert model.config.id2label == {0: "angular_leaf_spot", 1: "bean_rust", 2: "healthy"}
    assert model.config.label2id["healthy"] == 2
    prepared = prepare(DataConfig(dataset=str(data), cache_dir=str(data_cache), num_workers=0),
                       build_image_processor(ModelConfig(name="tiny")))
    x, y = prepared.eval.tensors()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    result = json.loads((out / "result.json").read_text())
    assert abs(F.cross_entropy(logits, y).item() - result["eval_loss"]) < 1e-5
    assert abs((logits.argmax(-1) == y).double().mean().item() - result["eval_accuracy"]) < 1e-9


def test_tensorboard_scalars_and_hparams(learn_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, out, _ = learn_run
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "train/mem_gib",
                "eval/loss", "eval/accuracy", "hparam/accuracy"):
        assert tag in tags, (tag, tags)
    assert len(acc.Scalars("eval/accuracy")) == 10
    # a confusion matrix and a strip of misclassified validation images at every evaluation
    assert {"eval/confusion_matrix", "eval/misclassified"} <= set(acc.Tags()["images"])
    assert len(acc.Images("eval/confusion_matrix")) == 10
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["optim.lr"].number_value == pytest.approx(2e-3)
    assert session.hparams["parallel.plugin"].string_value == "torch_ddp"


def test_progress_lines_read_well_in_a_log_file(learn_run) -> None:
    """No carriage-return progress bar when stdout is a file (as in a Slurm log)."""
    _, out, _ = learn_run
    progress = json.loads((out / "progress.json").read_text())
    assert progress["state"] == "completed" and progress["step"] == progress["total_steps"] == 180


def test_help_and_config_error_exit_codes() -> None:
    help_out = subprocess.run([sys.executable, "-m", "vit_train", "--help"], cwd=REPO, env=child_env(),
                              capture_output=True, text=True, timeout=60)
    assert help_out.returncode == 0 and "--parallel.tp_size" in help_out.stdout and "torchrun" in help_out.stdout
    # One default per flag, RunConfig's (argparse's own None default was printed after it once).
    assert "(default: None) (default:" not in help_out.stdout and ") (default: None)" not in help_out.stdout
    flags = re.split(r"\n  --", help_out.stdout.split("options:")[1])[3:]  # after -h, --config, --print-config
    assert len(flags) > 30 and all(f.count("(default:") == 1 for f in flags), [f for f in flags if f.count("(default:") != 1]
    assert "(default: 0)" in " ".join(flags[0].split())  # --checkpoint.every_n_steps
    bad = subprocess.run([sys.executable, "-m", "vit_train", "--parallel.plugin", "fsdp"], cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "parallel.plugin='fsdp'" in bad.stderr and "hybrid_parallel" in bad.stderr


def test_multi_process_runs_exit_zero_every_time(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    """ColossalAI on gloo used to abort at interpreter exit now and then; the exit path is explicit."""
    for i in range(4):
        proc = run_cli(base_args(synthetic_dataset, data_cache, tmp_path / f"r{i}",
                                 **{"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2, "optim.max_steps": 2}),
                       nproc=2)
        assert proc.returncode == 0
        assert "terminate called" not in proc.stderr
