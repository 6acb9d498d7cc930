"""``make demo``: the whole product on one machine, on the project's local real Slurm cluster.

One line per step on the terminal; the details (submission and preflight lines, status tables, every
run's Slurm log) go to ``<root>/demo.log``, whose path is printed first. A step that fails says so
loudly, with the tail of the log that tells why, and the demo exits 1.

1. data: generate the synthetic beans-like dataset (vit_train.synthetic) and a tiny "pretrained" ViT;
2. cluster: start the dev cluster (real slurmctld/slurmd/slurmdbd, two nodes, fake GPUs);
3. submit: the reference grid's 3x3 shape (grids/cpu_tiny.yaml) as one job array, plus one 2-node
   run with tensor parallelism across the nodes (grids/demo_2node.yaml);
4. preempt: USR2 to the 2-node run half-way (what Slurm sends before preemption or the time limit):
   it checkpoints collectively, is requeued and resumes;
5. train: wait until every run settles (a live count on a terminal);
then the results tables, the accuracy check against the demo's targets, the TensorBoard command and
the demo's wall time; the cluster is stopped, the run folders kept. A second `make demo` reuses
finished runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from rich.console import Console

from hpc import report, runstate, submission
from hpc.cli import render_status
from hpc.dev import cluster as devcluster
from hpc.grid import expand, load_grid
from hpc.preflight import PreflightError
from vit_train.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
GRID_FILES = ("cpu_tiny.yaml", "demo_2node.yaml")
"""The 3x3 grid, then the 2-node run that gets preempted half-way."""
DATA_DIR, MODEL_DIR = "data/beans_synthetic_v2", "models/tiny-vit"
DATA = {"num_train": 1800, "num_validation": 300, "num_test": 60, "image_size": 32, "seed": 0}
"""A ViT from random weights needs images more than epochs (grids/cpu_tiny.yaml says what 600 gave);
32 px is the tiny preset's input, so nothing is resized."""
DATA_TEXT = ("synthetic beans-like leaf photos (vit_train.synthetic), 3 classes told apart only by lesions on the "
             "leaf: angular_leaf_spot = a few large angular brown patches with yellow margins, bean_rust = many small "
             "orange pustules, healthy = none; leaf position, size, rotation and colour, background, debris, "
             "exposure and noise are random and alike for every class; the validation images are drawn "
             "independently of the training ones (other seeds). Chance is 0.33.")
TARGET_BEST, TARGET_EVERY, TARGET_WALL_S = 0.90, 0.50, 300
Log = Callable[[str], None]


class DemoError(Exception):
    """A step failed; ``log`` names the file whose tail tells why (the demo log when None)."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class Steps:
    """One line per step on the console, everything else into the log file."""

    def __init__(self, out: Console, log_path: Path, total: int) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.out, self.log_path, self.total, self.index = out, log_path, total, 0
        self._log = open(log_path, "w", buffering=1)  # noqa: SIM115  closed by close()

    def detail(self, text: str) -> None:
        self._log.write(text.rstrip("\n") + "\n")

    def say(self, text: str, style: str | None = None) -> None:
        self.out.print(text, style=style, markup=False, highlight=False)
        self.detail(text)

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Yields a list to put the step's one-line summary in. What the step's code prints goes to the
        log; a failure is printed with the tail of the log that tells why."""
        self.index += 1
        tag, summary, t0 = f"[{self.index}/{self.total}] {name}", [], time.monotonic()
        self.detail(f"\n===== {tag} ({time.strftime('%H:%M:%S')})")
        try:
            with redirect_stdout(self._log), redirect_stderr(self._log):
                yield summary
        except Exception as e:
            if not isinstance(e, (DemoError, ConfigError, PreflightError)):  # these say all there is to say
                self.detail(traceback.format_exc())
            log = e.log if isinstance(e, DemoError) and e.log else self.log_path
            self.out.print(f"{tag}: FAILED after {time.monotonic() - t0:.0f} s: {e}", style="bold red", markup=False,
                           highlight=False)
            self.out.print(f"last lines of {log}:\n{tail(log)}", markup=False, highlight=False)
            self.detail(f"{tag}: FAILED: {e}")
            raise DemoError(f"step {name} failed") from e
        self.say(f"{tag}: {' '.join(summary)} ({time.monotonic() - t0:.0f} s)")

    def close(self) -> None:
        self._log.close()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read it: {e.strerror})"


# ---------------------------------------------------------------------------- the steps
def prepare_assets(root: Path, log: Log = print) -> str:
    """Dataset and model the grids point at (idempotent: existing ones are kept); says what it did."""
    import datasets

    from vit_train.model import save_local_model
    from vit_train.synthetic import make_beans_like

    datasets.disable_progress_bars()  # one line per step: no "Saving the dataset" bars
    data, model, made = root / DATA_DIR, root / MODEL_DIR, []
    if not (data / "dataset_dict.json").is_file():
        log(f"generating the synthetic beans-like dataset in {data}: {DATA}")
        make_beans_like(data, **DATA)
        made.append("dataset")
    if not (model / "config.json").is_file():
        log(f"writing a tiny ViT (random weights, 1000-class head) to {model}")
        import torch

        torch.manual_seed(0)  # the same "pretrained" weights on every machine, so results repeat
        save_local_model("tiny", model, num_labels=1000)
        made.append("model")
    meta = {**DATA, **_read_json(data / "synthetic.json")}  # a kept dataset says its own sizes
    what = (f"{meta['num_train']} training + {meta['num_validation']} validation images of {meta['image_size']} px "
            f"and a tiny ViT in {_shown(root)}")
    return what + (f" ({' and '.join(made)} made now)" if made else " (kept from an earlier run)")


def _statuses(grid: Path) -> list[runstate.RunStatus]:
    runs = expand(load_grid(grid))
    return submission.read_statuses([r.run_dir for r in runs], [r.config.to_dict() for r in runs])


def submit_all(grids: Sequence[Path], log: Log) -> str:
    parts = []
    for grid in grids:
        log(f"--- python submit.py submit {grid}")
        outcome = submission.submit(grid, out=log)
        arrays = sorted({job.split("_")[0] for job in outcome.job_ids.values()})
        kept = len(outcome.decisions) - len(outcome.job_ids)
        text = f"{load_grid(grid).name}: {len(outcome.job_ids)} run(s) submitted"
        text += f" as job {', '.join(arrays)}" if arrays else ""
        parts.append(text + (f", {kept} finished or in flight kept" if kept else ""))
    return "; ".join(parts)


def preempt_halfway(grid: Path, log: Log, timeout_s: float) -> str:
    """Send USR2 to the grid's (single) run once it is half-way; says what happened."""
    run = expand(load_grid(grid))[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = submission.read_statuses([run.run_dir])[0]
        if st.phase == "finished":
            return f"{run.name} is already finished: nothing to preempt (rerun with a fresh folder to see it)"
        if st.phase in ("failed", "cancelled"):
            err = runstate.stderr_path(run.run_dir, st.job_id) if st.job_id else None
            raise DemoError(f"{run.name} {st.phase} before half-way: {st.failure}", err)
        progress = _read_json(run.run_dir / "progress.json")
        if progress.get("state") == "running" and progress.get("step", 0) * 2 >= progress.get("total_steps", 1):
            cmd = ["scancel", "--signal=USR2", str(st.job_id)]
            log(f"$ {' '.join(cmd)}")
            subprocess.run(cmd, check=True, timeout=30, capture_output=True, text=True)
            return (f"preempting {run.name} at step {progress['step']}/{progress['total_steps']}: {' '.join(cmd)} "
                    "(it checkpoints, is requeued and resumes)")
        time.sleep(0.5)
    return f"{run.name} did not reach half-way within {timeout_s:.0f} s; not preempted"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_all(grids: Sequence[Path], out: Console, log: Log, timeout_s: float) -> str:
    """Until every run has settled: a status table into the log every 20 s, a one-line count on a
    terminal. Raises DemoError naming every run that did not finish."""
    deadline, last_log, t0 = time.monotonic() + timeout_s, 0.0, time.monotonic()
    live = out.status("training ...") if out.is_terminal else None
    if live:
        live.start()
    try:
        while True:
            per_grid = [(load_grid(g).name, _statuses(g)) for g in grids]
            every = [s for _, sts in per_grid for s in sts]
            settled = all(s.phase in runstate.SETTLED for s in every)
            if settled or time.monotonic() - last_log > 20:
                for name, sts in per_grid:
                    log(render_status(sts, name, "text", width=170))
                last_log = time.monotonic()
            if settled:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"not settled after {timeout_s:.0f} s: {_count(every)}; `python submit.py status "
                                f"{grids[0]}` shows where they are")
            if live:
                live.update(f"training: {_count(every)} ({time.monotonic() - t0:.0f} s)")
            time.sleep(2)
    finally:
        if live:
            live.stop()
    for s in every:  # the training logs, for the record
        for suffix in ("out", "err"):
            path = runstate.stderr_path(Path(s.run_dir), s.job_id).with_suffix(f".{suffix}") if s.job_id else None
            if path and path.is_file():
                log(f"--- {s.name}: {path}\n{path.read_text(errors='replace')}")
    bad = [s for s in every if s.phase != "finished"]
    if bad:
        first = bad[0]
        raise DemoError("; ".join(f"{s.name} {s.phase}: {s.failure or 'no reason recorded'}" for s in bad),
                        runstate.stderr_path(Path(first.run_dir), first.job_id) if first.job_id else None)
    restarts = sum(s.restarts for s in every)
    resumed = f"{restarts} restart(s): a preempted run resumes from its newest checkpoint" if restarts else "no restart"
    return f"{len(every)} runs finished ({resumed})"


def _count(statuses: Sequence[runstate.RunStatus]) -> str:
    phases = [s.phase for s in statuses]
    return ", ".join(f"{phases.count(p)} {p}" for p in runstate.PHASES if phases.count(p))


def accuracy_check(grid_rows: Sequence[report.ResultRow], two_node: Sequence[report.ResultRow],
                   min_best: float, min_every: float) -> tuple[bool, str]:
    """The demo's claim: the grid clearly learns (its best point and every point) and so does the 2-node run."""
    accs = [r.accuracy for r in grid_rows]
    accs_2 = [r.accuracy for r in two_node]
    if any(a is None for a in accs + accs_2):
        return False, "accuracy check: some runs have no result"
    checks = [(f"best grid point {max(accs):.3f} >= {min_best:.2f}", max(accs) >= min_best),
              (f"worst grid point {min(accs):.3f} > {min_every:.2f}", min(accs) > min_every)]
    checks += [(f"2-node run {a:.3f} > {min_every:.2f}", a > min_every) for a in accs_2]
    ok = all(passed for _, passed in checks)
    text = "; ".join(f"{what} {'ok' if passed else 'NOT MET'}" for what, passed in checks)
    return ok, f"accuracy check (validation, chance 0.33): {text}"


def _process_start() -> float:
    """time.monotonic() at this process's start, so the printed wall time includes the imports."""
    import psutil

    return time.monotonic() - max(0.0, time.time() - psutil.Process().create_time())


def _shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.dev.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids-dir", type=Path, default=REPO / "grids",
                   help=f"folder holding {' and '.join(GRID_FILES)} (tests use trimmed copies)")
    p.add_argument("--root", type=Path, help="where the dataset, the tiny model and demo.log go (default: "
                   "GRIDS_DIR/../demo_runs, where the grids' ../demo_runs paths point)")
    p.add_argument("--prepare-only", action="store_true", help="only generate the dataset and model")
    p.add_argument("--keep-cluster", action="store_true", help="leave the local Slurm cluster running")
    p.add_argument("--timeout", type=float, default=540, help="seconds to wait for all runs")
    p.add_argument("--min-best", type=float, default=TARGET_BEST, help="accuracy the best grid point must reach")
    p.add_argument("--min-every", type=float, default=TARGET_EVERY,
                   help="accuracy every grid point and the 2-node run must exceed")
    args = p.parse_args(argv)
    t0 = _process_start()
    # The terminal itself (a step's own prints are redirected to the log); a log file gets wide tables.
    out = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 170)
    root = (args.root or args.grids_dir.resolve().parent / "demo_runs").absolute()
    grids = [args.grids_dir / name for name in GRID_FILES]
    steps = Steps(out, root / "demo.log", total=1 if args.prepare_only else 5)
    steps.say("make demo: the reference grid's 3x3 shape (batch size x learning rate) and one 2-node tensor-parallel "
              "run of a tiny ViT, on a local real Slurm cluster.")
    steps.say(f"data: {DATA_TEXT}")
    steps.say(f"details (submissions, status tables, training logs): {_shown(steps.log_path)}")
    started_cluster = False
    try:
        with steps.step("data") as line:
            line.append(prepare_assets(root, steps.detail))
        if args.prepare_only:
            return 0
        with steps.step("cluster") as line:
            info = devcluster.start()
            started_cluster = True
            line.append(f"local Slurm cluster up: nodes {', '.join(info.nodes)}, partitions {', '.join(info.partitions)}")
        with steps.step("submit") as line:
            # The 2-node run first: it needs a CPU on both nodes, which the grid's tasks would fill first.
            line.append(submit_all(grids[::-1], steps.detail))
        with steps.step("preempt") as line:
            line.append(preempt_halfway(grids[1], steps.detail, timeout_s=240))
        with steps.step("train") as line:
            line.append(wait_all(grids, out, steps.detail, max(60.0, args.timeout - (time.monotonic() - t0))))
        rows = [[report.read_row(r.run_dir, r.config.to_dict()) for r in expand(load_grid(g))] for g in grids]
        for grid, grid_rows in zip(grids, rows):
            table = report.format_text(grid_rows, title=f"results: {load_grid(grid).name}", ansi=out.is_terminal)
            out.print(table, end="", markup=False, highlight=False)
            steps.detail(report.format_text(grid_rows, title=f"results: {load_grid(grid).name}"))
        ok, check = accuracy_check(rows[0], rows[1], args.min_best, args.min_every)
        steps.say(check, style=None if ok else "bold red")
        grid_dir = load_grid(grids[0]).grid_dir
        steps.say(f"TensorBoard for the grid:  python submit.py tensorboard {_shown(grid_dir)}")
        wall = time.monotonic() - t0
        steps.say(f"run folders kept under {_shown(grid_dir.parent)}; demo took {wall:.0f} s "
                  f"(target <= {TARGET_WALL_S} s{'' if wall <= TARGET_WALL_S else ', NOT MET'})")
        return 0 if ok else 1
    except DemoError:
        return 1
    finally:
        if started_cluster and not args.keep_cluster:
            with redirect_stdout(steps._log):
                devcluster.stop()
            steps.say("local Slurm cluster stopped")
        steps.close()


if __name__ == "__main__":
    sys.exit(main())
