"""`make demo`'s flow end to end on the real local Slurm cluster, on a trimmed copy of its grids
(2x2 instead of 3x3, fewer epochs, a smaller synthetic dataset): submit, preempt the 2-node run
half-way, wait, print the results table. The printed table must match the run folders' result files;
the terminal gets one line per step, the details go to the log file it names. (The demo's accuracy
targets are for its full-size data; here they are lowered to 0, the check line is still printed.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train_utils import REPO, child_env

pytestmark = pytest.mark.slurm


def _trimmed_grids(root: Path) -> Path:
    grids = root / "grids"
    grids.mkdir(parents=True)
    tiny = yaml.safe_load((REPO / "grids" / "cpu_tiny.yaml").read_text())
    tiny["grid"] = {"optim.batch_size": [8, 16], "optim.lr": [1.0e-3, 2.0e-3]}
    tiny["base"]["optim"]["epochs"] = 2
    (grids / "cpu_tiny.yaml").write_text(yaml.safe_dump(tiny))
    two = yaml.safe_load((REPO / "grids" / "demo_2node.yaml").read_text())
    two["base"]["optim"]["epochs"] = 4
    two["base"]["checkpoint"]["every_n_steps"] = 5
    (grids / "demo_2node.yaml").write_text(yaml.safe_dump(two))
    return grids


def test_demo_flow_prints_the_table_of_the_result_files(slurm_cluster, tmp_path: Path) -> None:
    from vit_train.synthetic import make_beans_like

    grids = _trimmed_grids(tmp_path)
    make_beans_like(tmp_path / "demo_runs" / "data" / "beans_synthetic_v2", num_train=160, num_validation=40,
                    num_test=8, image_size=32, seed=0)
    proc = subprocess.run([sys.executable, "-m", "hpc.dev.demo", "--grids-dir", str(grids), "--keep-cluster",
                           "--timeout", "420", "--min-best", "0", "--min-every", "0"], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert re.search(r"preempting \S+ at step \d+/\d+: scancel --signal=USR2", out), out[-3000:]

    # One line per step, in order; what the data is; the details in the log file, not on the terminal.
    steps = re.findall(r"^\[(\d)/5\] (\w+): ", out, re.M)
    assert steps == [(str(i), name) for i, name in enumerate(["data", "cluster", "submit", "preempt", "train"], 1)], out
    assert "data: synthetic beans-like leaf photos" in out and "drawn independently" in out
    log = tmp_path / "demo_runs" / "demo.log"
    assert f"details (submissions, status tables, training logs): {log}" in out
    details = log.read_text()
    assert "1 of 1 runs submitted" in details and "4 of 4 runs submitted" in details  # submit's own lines
    assert "│ phase" in details or " phase " in details  # status tables
    assert "eval step" in details  # training logs (the runs' Slurm logs)
    assert " phase " not in out and "submitted; logs in" not in out and "eval step" not in out
    assert "Saving the dataset" not in out + proc.stderr
    assert re.search(r"^accuracy check \(validation, chance 0\.33\): best grid point [\d.]+ >= 0\.00 ok; "
                     r"worst grid point [\d.]+ > 0\.00 ok; 2-node run [\d.]+ > 0\.00 ok$", out, re.M), out[-2000:]
    assert re.search(r"demo took \d+ s \(target <= 300 s", out)

    results = {}
    for rj in (tmp_path / "runs" / "cpu_tiny").glob("*/result.json"):
        cfg = json.loads((rj.parent / "config.json").read_text())
        results[(cfg["optim"]["batch_size"], cfg["optim"]["lr"])] = json.loads(rj.read_text())
    assert len(results) == 4
    table = out[out.index("results: cpu_tiny"):]
    for (bs, lr), res in results.items():
        row = re.search(rf"│\s+{bs} │\s+{lr:.0e} │\s+([\d.]+) │\s+\**([\d.]+)", table)
        assert row, (bs, lr, table[:2000])
        assert float(row.group(1)) == pytest.approx(res["avg_train_loss"], abs=1e-4)
        assert float(row.group(2)) == pytest.approx(res["eval_accuracy"], abs=1e-4)

    two_node = next((tmp_path / "runs" / "demo_2node").glob("*/result.json"))
    res = json.loads(two_node.read_text())
    assert res["status"] == "completed" and res["world_size"] == 2
    assert res["restarts"] == 1, "the preempted run should have resumed exactly once"
    assert "TensorBoard for the grid:  python submit.py tensorboard" in out


def test_demo_failing_step_is_loud(slurm_cluster, tmp_path: Path) -> None:
    """A grid whose dataset is not where it says: the submit step fails, names why, shows the log tail."""
    from vit_train.synthetic import make_beans_like

    grids = _trimmed_grids(tmp_path)
    make_beans_like(tmp_path / "demo_runs" / "data" / "beans_synthetic_v2", num_train=24, num_validation=12,
                    num_test=6, image_size=32)
    tiny = yaml.safe_load((grids / "cpu_tiny.yaml").read_text())
    tiny["base"]["data"]["dataset"] = "../nowhere"
    (grids / "cpu_tiny.yaml").write_text(yaml.safe_dump(tiny))
    proc = subprocess.run([sys.executable, "-m", "hpc.dev.demo", "--grids-dir", str(grids), "--keep-cluster"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"^\[3/5\] submit: FAILED after \d+ s: preflight of \S+cpu_tiny.yaml failed", out, re.M), out
    assert "nowhere does not exist" in out
    assert f"last lines of {tmp_path / 'demo_runs' / 'demo.log'}:\n" in out and "--- python submit.py submit" in out
    assert "[4/5]" not in out
