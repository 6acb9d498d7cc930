"""``python submit.py tensorboard GRID_FOLDER``: one TensorBoard over every run of a grid.

Each run writes its curves and an HParams summary into ``<run>/tb/`` (vit_train.components.tracking), so
TensorBoard pointed at the grid folder shows every run's curves side by side and its HParams view
lists every grid point; runs are named ``<run folder>/tb``. Runs appear while they train (TensorBoard
re-reads the folder every few seconds), so this can be started as soon as the grid is submitted.

It listens on 127.0.0.1 unless told otherwise: TensorBoard has no authentication, and a login node
is shared. From a laptop, reach it through the ssh tunnel whose command is printed (it names the
port, $USER and this host; inside a Slurm allocation it jumps through the submit host).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def resolve_logdir(target: Path) -> Path:
    """The grid folder: TARGET itself, or the folder a grid YAML writes its runs to."""
    if target.is_file():
        from hpc.grid import load_grid

        return load_grid(target).grid_dir
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no such grid folder; give a grid folder made by `submit` or its grid YAML")
    return target.resolve()


def tunnel_command(port: int, *, user: str, host: str, jump: str | None = None) -> str:
    """The ssh command that forwards localhost:PORT on the user's machine to TensorBoard on HOST."""
    via = f" -J {user}@{jump}" if jump else ""
    return f"ssh -N{via} -L {port}:localhost:{port} {user}@{host}"


def tunnel_for_here(port: int, env: Mapping[str, str] | None = None) -> str:
    """:func:`tunnel_command` for this machine: direct on a login node, through the submit host on a compute node."""
    env = os.environ if env is None else env
    user = env.get("USER") or env.get("LOGNAME") or "$USER"
    host = socket.gethostname()
    jump = env.get("SLURM_SUBMIT_HOST") if env.get("SLURM_JOB_ID") else None
    return tunnel_command(port, user=user, host=host, jump=jump if jump and jump != host else None)


def start(logdir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> tuple[Any, str]:
    """Start the real TensorBoard server in background threads; returns (the TensorBoard, its URL).

    port None: TensorBoard's default (6006, or the next free one); 0: any free port.
    """
    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(logdir), "--host", host, "--port", "default" if port is None else str(port)])
    return tb, tb.launch()


def count_runs(logdir: Path) -> int:
    """Run folders that already hold TensorBoard event files."""
    return len({p.parent.parent for p in logdir.glob("*/tb/events.out.tfevents.*")})


def add_parser(subparsers: Any) -> None:
    """Register ``tensorboard``: serve the curves and HParams of every run of a grid."""
    p = subparsers.add_parser(
        "tensorboard",
        help="start TensorBoard over a grid folder (all runs' curves, HParams table of the grid) on localhost",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("target", metavar="GRID_FOLDER", type=Path, help="grid folder made by submit (or its grid YAML)")
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="port to listen on; default 6006 or the next free one; 0 = any free port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else exposes the runs to the network)")
    p.set_defaults(handler=cmd_tensorboard)


def cmd_tensorboard(args: argparse.Namespace) -> int:
    try:
        logdir = resolve_logdir(args.target)
    except (FileNotFoundError, ValueError) as e:  # ValueError: a GridError from a bad YAML
        print(f"error: {e}", file=sys.stderr)
        return 2
    # TensorBoard logs a warning per HTTP response about its own plugins' headers; not the user's business.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    from tensorboard.program import TensorBoardServerException

    try:
        _tb, url = start(logdir, port=args.port, host=args.host)  # serves from background threads
    except TensorBoardServerException as e:  # e.g. the port is taken
        print(f"error: tensorboard: {e}", file=sys.stderr)
        return 1
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    num_runs = count_runs(logdir)
    print(f"TensorBoard on {url} for {logdir} ({num_runs} run(s) with curves so far; more appear as they start)")
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this host can read these runs")
    print(f"from your machine: {tunnel_for_here(port)}")
    print(f"then open http://localhost:{port}/ (HParams: http://localhost:{port}/#hparams); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("TensorBoard stopped")
    return 0
