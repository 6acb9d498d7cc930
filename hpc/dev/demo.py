"""``make demo``: the whole product on one machine, on the project's local real Slurm cluster.

1. start the dev cluster (real slurmctld/slurmd/slurmdbd, two nodes, fake GPUs);
2. generate the synthetic beans-like dataset and a tiny "pretrained" ViT (no hub here);
3. submit the reference grid's 3x3 shape (grids/cpu_tiny.yaml) as one job array, plus one 2-node
   run with tensor parallelism across the nodes (grids/demo_2node.yaml);
4. preempt the 2-node run half-way with USR2 (what Slurm sends before preemption or the time
   limit): it checkpoints collectively, is requeued and resumes;
5. show a live status table until every run settles, then the results table and the TensorBoard
   command; stop the cluster, keep the run folders. A second `make demo` reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console, Group
from rich.live import Live

from hpc import report, runstate, submission
from hpc.dev import cluster as devcluster
from hpc.cli import status_table
from hpc.grid import expand, load_grid

REPO = Path(__file__).resolve().parents[2]
GRID_FILES = ("cpu_tiny.yaml", "demo_2node.yaml")
"""The 3x3 grid, then the 2-node run that gets preempted half-way."""


def prepare_assets(root: Path, out: Console) -> None:
    """Dataset and model the grids point at (idempotent: existing ones are kept)."""
    from vit_train.model import save_local_model
    from vit_train.synthetic import make_beans_like

    data = root / "data" / "beans_synthetic"
    if not (data / "dataset_dict.json").is_file():
        out.print(f"generating the synthetic beans-like dataset in {data}")
        make_beans_like(data, num_train=600, num_validation=150, num_test=60, image_size=64, seed=0)
    model = root / "models" / "tiny-vit"
    if not (model / "config.json").is_file():
        out.print(f"writing a tiny ViT (random weights, 1000-class head) to {model}")
        import torch

        torch.manual_seed(0)  # the same "pretrained" weights on every machine, so results repeat
        save_local_model("tiny", model, num_labels=1000)


def _statuses(grid: Path) -> list[runstate.RunStatus]:
    runs = expand(load_grid(grid))
    return submission.read_statuses([r.run_dir for r in runs], [r.config.to_dict() for r in runs])


def preempt_halfway(grid: Path, out: Console, timeout_s: float) -> bool:
    """Send USR2 to the grid's (single) run once it is half-way; False if it finished first."""
    run = expand(load_grid(grid))[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = submission.read_statuses([run.run_dir])[0]
        if st.phase == "finished":
            out.print(f"{run.name} is already finished: nothing to preempt (rerun with a fresh folder to see it)")
            return False
        progress = _read_json(run.run_dir / "progress.json")
        if progress.get("state") == "running" and progress.get("step", 0) * 2 >= progress.get("total_steps", 1):
            out.print(f"[bold]preempting {run.name}[/] at step {progress['step']}/{progress['total_steps']}: "
                      f"scancel --signal=USR2 {st.job_id}")
            subprocess.run(["scancel", "--signal=USR2", str(st.job_id)], check=True, timeout=30)
            return True
        time.sleep(0.5)
    out.print(f"{run.name} did not reach half-way within {timeout_s:.0f} s; not preempted")
    return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_all(grids: Sequence[Path], out: Console, timeout_s: float) -> bool:
    """Live status tables (a TTY) or one table every 20 s (a log) until every run has settled."""
    deadline = time.monotonic() + timeout_s
    last_print = 0.0

    def tables() -> tuple[Group, bool]:
        per_grid = [(g, _statuses(g)) for g in grids]
        settled = all(s.phase in runstate.SETTLED for _, sts in per_grid for s in sts)
        return Group(*[status_table(sts, load_grid(g).name) for g, sts in per_grid]), settled

    if out.is_terminal:
        with Live(console=out, refresh_per_second=1) as live:
            while time.monotonic() < deadline:
                view, settled = tables()
                live.update(view)
                if settled:
                    return True
                time.sleep(2)
        return False
    while time.monotonic() < deadline:
        view, settled = tables()
        if settled or time.monotonic() - last_print > 20:
            out.print(view)
            last_print = time.monotonic()
        if settled:
            return True
        time.sleep(2)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.dev.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids-dir", type=Path, default=REPO / "grids",
                   help=f"folder holding {' and '.join(GRID_FILES)} (tests use trimmed copies)")
    p.add_argument("--root", type=Path, help="where the dataset and tiny model go (default: GRIDS_DIR/../demo_runs, "
                   "where the grids' ../demo_runs paths point)")
    p.add_argument("--prepare-only", action="store_true", help="only generate the dataset and model")
    p.add_argument("--keep-cluster", action="store_true", help="leave the local Slurm cluster running")
    p.add_argument("--timeout", type=float, default=540, help="seconds to wait for all runs")
    args = p.parse_args(argv)
    # A log file gets wide tables (no wrapping of run names); a terminal keeps its own width.
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 170)
    t0 = time.monotonic()
    grids = [args.grids_dir / name for name in GRID_FILES]
    prepare_assets(args.root or args.grids_dir.resolve().parent / "demo_runs", out)
    if args.prepare_only:
        return 0
    info = devcluster.start()
    out.print(f"local Slurm cluster up: nodes {', '.join(info.nodes)}, partitions {', '.join(info.partitions)}")
    ok = False
    try:
        for grid in grids:
            out.rule(f"submit {grid}")
            submission.submit(grid, out=out.print)
        preempt_halfway(grids[1], out, timeout_s=240)
        ok = wait_all(grids, out, timeout_s=max(60.0, args.timeout - (time.monotonic() - t0)))
        for grid in grids:
            spec = load_grid(grid)
            rows = [report.read_row(r.run_dir, r.config.to_dict()) for r in expand(spec)]
            out.print(report.format_text(rows, title=f"results: {spec.name}", ansi=out.is_terminal))
        grid_dir = load_grid(grids[0]).grid_dir
        shown = grid_dir.relative_to(REPO) if grid_dir.is_relative_to(REPO) else grid_dir
        out.print(f"TensorBoard for the grid:  python submit.py tensorboard {shown}")
        out.print(f"run folders kept under {grid_dir.parent}; demo took {time.monotonic() - t0:.0f} s")
    finally:
        if not args.keep_cluster:
            devcluster.stop()
            out.print("local Slurm cluster stopped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
