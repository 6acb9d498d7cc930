"""What importing vit_train changes so that a training process reaches its first step sooner.

:func:`install` runs when the package is imported, before any ColossalAI or transformers import of
a training process (``python -m vit_train``, the benchmark's workers). Each change removes import
work that vit_train's ViT fine-tuning never uses; where a user sets the variable, the user wins.
Where the time went: BENCHMARKS.md, start-up.

1. ``USE_FLAX=0`` (default): transformers skips its Flax support, whose image utilities otherwise
   import jax where it is installed (0.7 s on the H100 host).
2. :mod:`vit_train.patches.lazy_compile`: ColossalAI's import-time ``torch.compile`` decorations compile on
   first call instead of setting up inductor at import (off with ``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1``).
3. transformers' table of optional packages (``VIT_TRAIN_IMPORT_TRIMS=0`` keeps it as it is):

   - scikit-learn counts as absent. Every transformers model import reaches
     ``transformers.generation.candidate_generator``, which imports ``sklearn.metrics`` when
     scikit-learn is installed (1.1 s on the H100 host, with scipy.stats): only assisted text
     generation uses it.
   - scipy counts as absent: ``transformers.loss`` imports ``scipy.optimize`` for the matching in
     object-detection losses when scipy is installed.

   (torch._dynamo, 0.9 s on the H100 host, is not avoidable this way: besides transformers' flex
   attention and ColossalAI's launch, ``torch.optim.Optimizer.add_param_group`` imports it.)
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Callable

from vit_train.patches import import_hooks, lazy_compile

log = logging.getLogger(__name__)

TRIMS_ENV = "VIT_TRAIN_IMPORT_TRIMS"
TRANSFORMERS_TABLE = "transformers.utils.import_utils"
_HIDDEN_PACKAGES = ("_sklearn_available", "_scipy_available")


def _trim_optional_packages(module: ModuleType, run: Callable[[], None]) -> None:
    run()
    # These names exist in the pinned transformers (4.51); another release keeps its own table.
    if not all(hasattr(module, n) for n in _HIDDEN_PACKAGES):
        log.warning("%s lacks one of %s: import trims not applied", TRANSFORMERS_TABLE, ", ".join(_HIDDEN_PACKAGES))
        return
    for flag in _HIDDEN_PACKAGES:
        setattr(module, flag, False)


def trims_enabled() -> bool:
    return os.environ.get(TRIMS_ENV, "1") != "0"


def install() -> None:
    """Apply 1-3 above (idempotent; each change only matters before the library it concerns is imported)."""
    os.environ.setdefault("USE_FLAX", "0")
    lazy_compile.install()
    if trims_enabled():
        import_hooks.register(TRANSFORMERS_TABLE, _trim_optional_packages)
