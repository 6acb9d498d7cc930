"""Fault injection for the resume tests and the reliability suite; inert unless VIT_TRAIN_FAULT is set.

``VIT_TRAIN_FAULT`` holds comma-separated rules ``ACTION@WHERE=VALUE[/rank=R]``:

- ``stop@step=K``     after step K, behave as if the preemption signal (USR2) had arrived
- ``kill@step=K``     SIGKILL this process after step K (no warning, nothing saved)
- ``hold@step=K``     after step K, wait (up to ``HOLD_S``) for the real preemption signal: a test that
  preempts through Slurm then catches the run at a known step however fast its steps run
- ``kill@ckpt=POINT`` SIGKILL inside a checkpoint write, at POINT: ``after_model``,
  ``after_optimizer``, ``before_state``, ``before_marker``, ``before_rename``
- ``usr2@eval=K``     send this process a real SIGUSR2 in the middle of the evaluation that follows
  step K (what a preemption during evaluation looks like: the loop finishes the evaluation, then stops)
- ``/rank=R`` limits a rule to one global rank (default: every rank)

Each rule fires at most once per run folder (a marker file records it), so the resumed attempt,
which inherits the same environment under Slurm, runs on undisturbed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HOLD_S = 300.0
CKPT_POINTS = ("after_model", "after_optimizer", "before_state", "before_marker", "before_rename")


@dataclass(frozen=True)
class Rule:
    action: str
    where: str
    value: str
    rank: int | None

    @property
    def tag(self) -> str:
        return f"{self.action}-{self.where}-{self.value}-{self.rank}"


def parse(spec: str) -> list[Rule]:
    rules = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, _, rank = item.partition("/rank=")
        action, _, rest = head.partition("@")
        where, _, value = rest.partition("=")
        if (action, where) not in (("stop", "step"), ("kill", "step"), ("hold", "step"), ("kill", "ckpt"),
                                                 ("usr2", "eval")) or not value:
            raise ValueError(f"VIT_TRAIN_FAULT rule {item!r}: use stop@step=K, kill@step=K, hold@step=K, "
                             "kill@ckpt=POINT or usr2@eval=K [/rank=R]")
        if where == "ckpt" and value not in CKPT_POINTS:
            raise ValueError(f"VIT_TRAIN_FAULT rule {item!r}: checkpoint point must be one of {', '.join(CKPT_POINTS)}")
        rules.append(Rule(action, where, value, int(rank) if rank else None))
    return rules


class Faults:
    def __init__(self, run_dir: Path, rank: int, spec: str | None = None) -> None:
        spec = os.environ.get("VIT_TRAIN_FAULT", "") if spec is None else spec
        self.rules = parse(spec)
        self.run_dir = run_dir
        self.rank = rank
        self.stop_pending = False

    def _fire(self, rule: Rule) -> bool:
        if rule.rank is not None and rule.rank != self.rank:
            return False
        marker = self.run_dir / f".fault-{rule.tag}-rank{self.rank}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("fired\n")
        return True

    def after_step(self, step: int, stop_requested: Callable[[], bool] = lambda: False) -> None:
        for r in self.rules:
            if r.where == "step" and int(r.value) == step and self._fire(r):
                if r.action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if r.action == "hold":
                    deadline = time.monotonic() + HOLD_S
                    while not stop_requested() and time.monotonic() < deadline:
                        time.sleep(0.1)
                else:
                    self.stop_pending = True

    def in_eval(self, step: int) -> None:
        for r in self.rules:
            if r.where == "eval" and int(r.value) == step and self._fire(r):
                os.kill(os.getpid(), signal.SIGUSR2)

    def in_checkpoint(self, point: str) -> None:
        for r in self.rules:
            if r.where == "ckpt" and r.value == point and self._fire(r):
                os.kill(os.getpid(), signal.SIGKILL)
