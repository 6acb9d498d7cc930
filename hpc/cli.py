"""``python submit.py {submit,status,resume,cancel,report,prefetch,kernels,tensorboard}``: the login-node CLI.

Parsing and printing only; the work is in hpc.submission (submit/resume/cancel), hpc.runstate
(status) and hpc.report (results table). GRID_OR_FOLDER is a grid YAML, or a grid folder made by
``submit`` (it holds the run folders, each with run.json, and a copy of the grid file), so status and
report work on a copied or archived grid folder without the original YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hpc import report, runstate, submission
from hpc.grid import expand, load_grid
from hpc.preflight import PreflightError
from vit_train.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PHASE_STYLE = {"finished": "green", "running": "cyan", "pending": "blue", "preempted": "yellow",
               "failed": "red", "cancelled": "magenta", "not_submitted": "dim"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python submit.py",
        description="Send a ViT fine-tuning grid (YAML) to Slurm as one submitit job array, follow it, "
        "resume or cancel it, and print its results table. Start with: submit GRID.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", help="preflight, then submit runs not finished and not in flight")
    s.add_argument("grid", metavar="GRID", type=Path, help="grid YAML file")
    s.add_argument("--dry-run", action="store_true", help="print each run and the sbatch script; submit nothing")
    s.add_argument("--force", action="store_true", help="start every run over: cancel its in-flight job, move its "
                   "previous outputs to <run>/previous/<time>/, submit")
    _preflight_args(s)

    s = sub.add_parser("status", help="table of runs: phase, Slurm state, restarts, progress, metric, failure")
    s.add_argument("target", metavar="GRID_OR_FOLDER", type=Path, help="grid YAML, or a grid folder made by submit")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds until every run is settled")
    s.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="with --watch: give up after S seconds (exit 1); default 3600")

    s = sub.add_parser("resume", help="resubmit unfinished runs (failed, cancelled, preempted, never submitted)")
    s.add_argument("grid", metavar="GRID", type=Path, help="grid YAML file")
    s.add_argument("--failed", action="store_true", help="only failed runs worth retrying (node failure, collective "
                   "timeout, preemption, time limit); not out-of-memory or Python exceptions, which would repeat")
    _preflight_args(s)

    s = sub.add_parser("cancel", help="scancel the in-flight jobs of the grid's runs")
    s.add_argument("grid", metavar="GRID", type=Path, help="grid YAML file")

    s = sub.add_parser("report", help="results table: batch size, learning rate, average loss, accuracy")
    s.add_argument("target", metavar="GRID_OR_FOLDER", type=Path, help="grid YAML, or a grid folder made by submit")
    s.add_argument("--format", choices=report.FORMATS, default="text")

    # Commands with their own modules; each registers a parser whose handler(args) returns the exit code.
    from hpc import kernels, prefetch, tensorboard

    for module in (prefetch, kernels, tensorboard):
        module.add_parser(sub)
    return p


def _preflight_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-preflight-sbatch", action="store_true",
                   help="skip the Slurm part of the preflight (sinfo limits, sbatch --test-only)")
    s.add_argument("--offline", action="store_true",
                   help="require hub models/datasets in the local HF cache (implied by HF_HUB_OFFLINE=1)")
    s.add_argument("--local", action="store_true",
                   help="no Slurm: train the runs on this machine (every GPU it sees x slurm.runs_per_gpu, or CPU "
                   "processes), block until done, print the results table; Ctrl-C stops them with a checkpoint")


# ---------------------------------------------------------------------------- GRID_OR_FOLDER
def resolve_target(target: Path) -> tuple[str, list[Path], list[dict[str, Any] | None]]:
    """(title, run folders, fallback configs): every run of a grid file, or the run folders of a grid folder."""
    if target.is_dir():
        dirs = sorted(d for d in target.iterdir() if (d / runstate.RUN_FILE).is_file())
        if not dirs:
            raise ConfigError(f"{target}: no run folders (with {runstate.RUN_FILE}) in it; "
                              "give a grid YAML or a grid folder made by `submit`")
        return target.name, dirs, [None] * len(dirs)
    spec = load_grid(target)
    runs = expand(spec)
    return spec.name, [r.run_dir for r in runs], [r.config.to_dict() for r in runs]


# ---------------------------------------------------------------------------- status
def status_table(statuses: Sequence[runstate.RunStatus], title: str) -> Table:
    table = Table(title=title, caption=_summary(statuses))
    for name in ("run", "bs", "lr", "layout", "phase", "slurm", "restarts", "step", "epoch", "metric", "failure"):
        table.add_column(name, justify="right" if name in ("bs", "lr", "restarts", "step", "epoch") else "left",
                         overflow="fold")
    for st in statuses:
        table.add_row(
            st.name,
            "-" if st.batch_size is None else str(st.batch_size),
            "-" if st.lr is None else f"{st.lr:g}",
            st.layout or "-",
            f"[{PHASE_STYLE.get(st.phase, '')}]{st.phase}[/]",
            (st.slurm_state or "-") + (f" {st.job_id}" if st.job_id else ""),
            str(st.restarts),
            "-" if st.step is None else f"{st.step}/{st.total_steps or '?'}",
            "-" if st.epoch is None else f"{st.epoch:.2f}",
            st.metric or "-",
            st.failure or "",
        )
    return table


def _summary(statuses: Sequence[runstate.RunStatus]) -> str:
    counts = {p: sum(s.phase == p for s in statuses) for p in runstate.PHASES}
    return ", ".join(f"{n} {p}" for p, n in counts.items() if n)


def render_status(statuses: Sequence[runstate.RunStatus], title: str, fmt: str, width: int = 160) -> str:
    if fmt == "json":
        return json.dumps([dataclasses.asdict(s) for s in statuses], indent=1) + "\n"
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(status_table(statuses, title))
    return buf.getvalue()


def cmd_status(args: argparse.Namespace) -> int:
    title, dirs, configs = resolve_target(args.target)
    deadline = time.monotonic() + args.timeout
    console = Console(highlight=False)
    while True:
        statuses = submission.read_statuses(dirs, configs)
        if args.format == "text" and console.is_terminal:
            if args.watch:
                console.clear()
            console.print(status_table(statuses, title))
        else:
            sys.stdout.write(render_status(statuses, title, args.format))
            sys.stdout.flush()
        settled = all(s.phase in runstate.SETTLED for s in statuses)
        if not args.watch or settled:
            return EXIT_OK
        if time.monotonic() + args.watch > deadline:
            print(f"status: not settled after {args.timeout:.0f} s ({_summary(statuses)})", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(args.watch)


# ---------------------------------------------------------------------------- the rest
def cmd_report(args: argparse.Namespace) -> int:
    title, dirs, configs = resolve_target(args.target)
    rows = [report.read_row(d, c) for d, c in zip(dirs, configs)]
    if args.format == "text":
        sys.stdout.write(report.format_text(rows, title=title, ansi=sys.stdout.isatty()))
    else:
        sys.stdout.write(report.format_rows(rows, args.format))
    return EXIT_OK


def _run_local(args: argparse.Namespace) -> int:
    from hpc import local

    if args.command == "submit":
        code = local.run(args.grid, force=args.force, dry_run=args.dry_run, offline=args.offline)
    else:
        code = local.resume(args.grid, failed_only=args.failed, offline=args.offline)
    return EXIT_OK if code == 0 else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("submit", "resume") and args.local:
            return _run_local(args)
        if args.command == "submit":
            submission.submit(args.grid, dry_run=args.dry_run, force=args.force,
                              preflight_sbatch=not args.no_preflight_sbatch, offline=args.offline)
        elif args.command == "resume":
            submission.resume(args.grid, failed_only=args.failed, preflight_sbatch=not args.no_preflight_sbatch,
                              offline=args.offline)
        elif args.command == "cancel":
            submission.cancel(args.grid)
        elif args.command == "status":
            return cmd_status(args)
        elif args.command == "report":
            return cmd_report(args)
        else:
            return int(args.handler(args))
    except (PreflightError, ConfigError) as e:
        sys.stdout.flush()  # a dry run's runs and script come first, then the problems
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
