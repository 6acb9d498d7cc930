"""Helpers shared by the tests that drive grids through the real local Slurm (or the local executor):
read a grid's run states, wait for a condition on them, and tell whether a run trained exactly what
a reference run did."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from hpc import runstate, submission
from hpc.grid import expand, load_grid

Statuses = list[runstate.RunStatus]


def grid_statuses(grid: Path) -> Statuses:
    return submission.read_statuses([r.run_dir for r in expand(load_grid(grid))])


def wait_for_grid(grid: Path, pred: Callable[[Statuses], bool], what: str, timeout: float) -> Statuses:
    """Poll the grid's states until ``pred`` holds; fail naming every run's state when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        sts = grid_statuses(grid)
        if pred(sts):
            return sts
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {timeout:.0f} s: " +
                        "; ".join(f"{s.name} {s.phase} {s.slurm_state} step {s.step} {s.failure}" for s in sts))
        time.sleep(0.5)


def all_phase(phase: str) -> Callable[[Statuses], bool]:
    return lambda sts: all(s.phase == phase for s in sts)


def run_differs(ref: Path, run: Path, tol: float = 1e-6) -> str | None:
    """None when ``run`` trained exactly what ``ref`` did (steps, data order, losses, final weights,
    evaluation), else what differs."""
    from safetensors.torch import load_file

    def train(d: Path) -> list[dict[str, Any]]:
        return [r for r in runstate._read_jsonl(d / "metrics.jsonl") if r.get("kind") == "train"]

    ra, rb = train(ref), train(run)
    if [r["step"] for r in rb] != [r["step"] for r in ra]:
        return f"steps {[r['step'] for r in rb]} vs {[r['step'] for r in ra]}"
    if [r["batch_crc"] for r in rb] != [r["batch_crc"] for r in ra]:
        return "data order differs"
    bad = [(x["step"], x["loss"], y["loss"]) for x, y in zip(ra, rb) if abs(x["loss"] - y["loss"]) > tol]
    if bad:
        return f"losses differ at {bad[:3]}"
    wa, wb = (load_file(str(d / "final_model" / "model.safetensors")) for d in (ref, run))
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    if worst > tol:
        return f"final weights differ by {worst}"
    a, b = (json.loads((d / "result.json").read_text()) for d in (ref, run))
    return next((f"{k} {b[k]} vs {a[k]}" for k in ("eval_accuracy", "eval_loss", "avg_train_loss")
                 if abs(a[k] - b[k]) > tol), None)
