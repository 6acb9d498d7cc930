"""``model.deterministic``: what it switches, what it refuses, and the repeat check's plumbing.

The GPU claim (two runs bitwise equal with it, not without) is measured on a GPU by
``python -m vit_train.bench.repeat_check`` (BENCHMARKS.md); CPU kernels are repeatable either way, so
here the check can only prove its comparisons and the switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_utils import REPO, child_env
from vit_train import determinism
from vit_train.config import NON_SEMANTIC, RunConfig


@pytest.fixture
def restore_torch_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(determinism.CUBLAS_ENV, raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def test_enabling_switches_strict_deterministic_kernels(restore_torch_flags: None) -> None:
    determinism.use_deterministic_algorithms(False)
    assert not torch.are_deterministic_algorithms_enabled() and determinism.CUBLAS_ENV not in os.environ
    determinism.use_deterministic_algorithms(True)
    # warn_only=False: only then does PyTorch pick the deterministic flash-attention backward
    assert determinism.state() == {"deterministic_algorithms": True, "warn_only": False, "cudnn_deterministic": True,
                                   "cudnn_benchmark": False, determinism.CUBLAS_ENV: ":4096:8"}


def test_a_non_repeatable_cublas_workspace_is_refused_not_overridden(restore_torch_flags: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(determinism.CUBLAS_ENV, ":0:0")
    with pytest.raises(ValueError, match=r"model.deterministic=true but CUBLAS_WORKSPACE_CONFIG=':0:0'.*:4096:8 or :16:8"):
        determinism.use_deterministic_algorithms(True)
    assert os.environ[determinism.CUBLAS_ENV] == ":0:0" and not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv(determinism.CUBLAS_ENV, ":16:8")
    determinism.use_deterministic_algorithms(True)
    assert os.environ[determinism.CUBLAS_ENV] == ":16:8"


def test_it_does_not_change_the_run_signature() -> None:
    """How a run computes, not what it trains (like model.compile): resuming with it switched keeps the run."""
    from hpc.grid import run_signature

    assert "model.deterministic" in NON_SEMANTIC
    on = RunConfig.from_dict({"model": {"deterministic": True}})
    assert on.model.deterministic and run_signature(on) == run_signature(RunConfig())


def test_repeat_check_plumbing_on_cpu(tmp_path: Path) -> None:
    """Four real 3-step runs (tiny preset, torch_ddp fp32) in their own processes; on a CPU both pairs must
    come out bitwise equal, and the report names every pair's loss and weight differences."""
    out = tmp_path / "rc"
    proc = subprocess.run([sys.executable, "-m", "vit_train.bench.repeat_check", "--model", "tiny", "--steps", "3",
                           "--batch-size", "8", "--out", str(out)], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (mode,) = json.loads((out / "repeat_check.json").read_text())["modes"]
    for key in ("default", "deterministic"):
        pair = mode[key]
        assert pair["steps"] == 3 and pair["batch_crc_equal"] and pair["bitwise_equal"]
        assert pair["max_abs_loss_diff"] == 0.0 and pair["max_abs_weight_diff"] == 0.0
        for i in (1, 2):  # the Trainer switched the kernels (recorded in result.json) only when asked to
            result = json.loads((Path(mode["work_dir"]) / f"ddp_fp32-{key}-{i}" / "result.json").read_text())
            assert result["deterministic_kernels"] is (key == "deterministic")
    assert "| ddp_fp32 | deterministic | 0 / None | 0 | True | True |" in (out / "repeat_check.md").read_text()
