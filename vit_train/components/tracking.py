"""What a run tells the outside world, all from the one rank that logs.

- ``metrics.jsonl``: one JSON record per log interval and per evaluation (tests and `status` read it).
- ``progress.json``: the latest step/epoch/metric, replaced atomically (read by ``submit.py status``).
- TensorBoard scalars under ``tb/`` plus an HParams summary so the HParams view compares grid points.
- A fixed-field progress line per interval that reads well in a Slurm log; a tqdm bar only on a TTY.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from vit_train.components.fsutil import atomic_write_text


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def hparam_value(v: Any) -> Any:
    """TensorBoard HParams accept bool/int/float/str only."""
    if v is None:
        return "none"
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


class Tracker:
    """Writes logs for the run; every method is a no-op on ranks that do not log."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int, total_steps: int) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self._writer: Any = None
        self._bar: Any = None
        self._t0 = time.perf_counter()
        self._start_step = resume_step
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_path = run_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed attempt wrote past the checkpoint we resumed from.
            self._writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """Drop records of steps after the resumed checkpoint, so the file matches what the run did."""
        if not self._metrics_path.exists():
            return
        kept = []
        for line in self._metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self._metrics_path, "".join(k + "\n" for k in kept))

    def _append(self, record: Mapping[str, Any]) -> None:
        with open(self._metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_train(self, step: int, epoch: float, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._append({"kind": "train", "step": step, "epoch": epoch, **scalars})
        if self._writer is not None:
            for k, v in scalars.items():
                if k != "batch_crc":
                    self._writer.add_scalar(f"train/{k}", v, step)
        elapsed = time.perf_counter() - self._t0
        done = step - self._start_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        line = (
            f"step {step:>6d}/{self.total_steps} | epoch {epoch:6.2f} | loss {scalars['loss']:.4f} | "
            f"lr {scalars['lr']:.3e} | gnorm {scalars.get('grad_norm', float('nan')):.3f} | "
            f"{scalars['img_per_s']:8.1f} img/s | mem {scalars['mem_gib']:.2f} GiB | eta {_fmt_eta(eta)}"
        )
        self._print(line, advance_to=step)
        self.write_progress({"state": "running", "step": step, "epoch": epoch, "loss": scalars["loss"]})

    def log_eval(self, step: int, epoch: float, scalars: Mapping[str, float], figures: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        self._append({"kind": "eval", "step": step, "epoch": epoch, **scalars})
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(f"eval/{k}", v, step)
            for tag, fig in (figures or {}).items():
                self._writer.add_image(tag, fig, step, dataformats="HWC")
            self._writer.flush()
        self._print(
            f"eval step {step} | epoch {epoch:.2f} | loss {scalars['loss']:.4f} | accuracy {scalars['accuracy']:.4f} "
            f"| samples {int(scalars['samples'])}",
            advance_to=None,
        )

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """An HParams summary in the run's own event file: TensorBoard's HParams view lists one row per run."""
        if not self.enabled or self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        hp = {k: hparam_value(v) for k, v in hparams.items()}
        mt = {f"hparam/{k}": float(v) for k, v in metrics.items()}
        exp, ssi, sei = hparams_summary(hp, mt)
        fw = self._writer._get_file_writer()
        # No per-run experiment summary: with one in every run, TensorBoard takes the first run's
        # as the grid's and marks no hyper-parameter as varying (lr hidden). Without it, TensorBoard
        # builds the experiment from all runs' sessions and shows the varying ones first.
        fw.add_summary(ssi)
        fw.add_summary(sei)
        for k, v in mt.items():
            self._writer.add_scalar(k, v, 0)
        self._writer.flush()

    def write_progress(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"total_steps": self.total_steps, "time": time.time(), "pid": os.getpid(), **record}
        atomic_write_text(self.run_dir / "progress.json", json.dumps(rec, indent=1))

    def info(self, msg: str) -> None:
        if self.enabled:
            self._print(msg, advance_to=None)

    def _print(self, line: str, advance_to: int | None) -> None:
        if self._bar is not None:
            if advance_to is not None:
                self._bar.update(advance_to - self._bar.n)
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
