"""``python -m vit_train.bench`` end to end, as CI runs it on CPU (tiny model, 3 timed steps).

No speed is asserted: CPU numbers mean nothing. What is checked: every configuration is in the
JSON, each one that can run here ran in its own process with a positive images/s, its start-up
and losses, the ones that cannot (GPU-only) say why, the losses agree with the fp32 reference
(same weights, same batches), and the markdown table is written and printed last.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.train_utils import REPO, child_env
from vit_train.bench.configs import CONFIGS, skip_reason


def test_bench_runs_every_configuration_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "vit_train.bench.runner", "--model", "tiny", "--steps", "3", "--warmup", "2",
           "--batch-size", "16", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}"
    report = json.loads((out / "bench.json").read_text())
    meta = report["meta"]
    on_cuda, num_gpus = meta["device"] != "cpu", meta["num_gpus"]
    by_name = {r["name"]: r for r in report["configs"]}
    assert list(by_name) == [c.name for c in CONFIGS]
    ran = 0
    for c in CONFIGS:
        r = by_name[c.name]
        reason = skip_reason(c, on_cuda, num_gpus)
        if reason is not None:
            assert r["status"] == "skipped" and r["reason"] == reason, r
            continue
        ran += 1
        assert r["status"] == "ok", r
        assert r["img_per_s"] > 0 and r["step_ms"] > 0, r
        assert len(r["host_probe_ms"]) == 2 and all(v > 0 for v in r["host_probe_ms"]), r
        assert r["start_to_first_step_s"] > 0 and "first_step" in r["startup_marks"], r
        assert len(r["warmup_losses"]) == 2 and all(math.isfinite(v) for v in r["warmup_losses"]), r
        # Step 1: the fp32 reference's initial weights and batch, so only bf16 rounding may differ.
        assert r["first_loss_diff_vs_fp32"] < 0.02, r
    assert ran >= 8, "the CPU run should cover the baselines and every plugin but Gemini"
    assert report["data"]["host_gather_pageable_copy"] > 0
    assert [r["name"] for r in report["startup_recheck"]] == ["ddp", "hybrid"]
    assert all(r["status"] == "ok" for r in report["startup_recheck"])
    table = (out / "bench.md").read_text()
    assert "| torch_eager |" in table and "| hybrid |" in table
    assert proc.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the table is printed last
