"""Where a run's loop stands (:class:`LoopState`, saved in every checkpoint) and how a run ended
(:class:`RunOutcome`, what :meth:`vit_train.trainer.Trainer.train` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopState:
    """Everything besides weights and optimizer needed to continue exactly where a run stopped."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    last_epoch_avg_loss: float = float("nan")
    last_eval: dict[str, float] = field(default_factory=dict)
    restarts: int = 0


@dataclass(frozen=True)
class RunOutcome:
    status: str
    """completed | preempted"""
    step: int
    result: dict[str, Any]
