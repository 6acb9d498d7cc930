"""Apply a speed fix to a ColossalAI class once per process, and only to the version it was written for.

The fixes (:mod:`vit_train.patches.zero_buckets`, :mod:`vit_train.patches.amp_loops`) replace methods whose bodies
they reproduce in part, so a different ColossalAI release gets its own code untouched (and a warning).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

log = logging.getLogger(__name__)

AS_SHIPPED_ENV = "VIT_TRAIN_COLOSSALAI_AS_SHIPPED"


def as_shipped() -> bool:
    """True when ``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1``: every vit_train speed change to ColossalAI is
    off (the benchmark's same-run A/B of them)."""
    return os.environ.get(AS_SHIPPED_ENV) == "1"

WRITTEN_FOR = "0.5.0"
_applied: set[str] = set()


def patch_once(name: str, cls: type, make_methods: Callable[[], dict[str, Any]]) -> bool:
    """Set the methods ``make_methods()`` returns on ``cls`` (built only when applied, so they may close
    over the originals); True when applied now or before, False for another ColossalAI version."""
    if name in _applied:
        return True
    import colossalai

    if colossalai.__version__ != WRITTEN_FOR:
        log.warning("colossalai %s: %s written for %s, not applied", colossalai.__version__, name, WRITTEN_FOR)
        return False
    for attr, fn in make_methods().items():
        setattr(cls, attr, fn)
    _applied.add(name)
    return True
