"""Start-up trims for training processes: every second here is paid by every job of a grid.

transformers imports scikit-learn whenever it is installed, from its text-generation module (for
assisted decoding's candidate filter), which loading any model pulls in. ViT fine-tuning never
generates text, yet on the H100 host of BENCHMARKS.md that import took ~1.1 s of the ~10 s from
process start to the first optimizer step. :func:`skip_unused_imports` tells transformers that
scikit-learn is absent before that module loads; only the training entry points call it (the
login-node tools never import transformers), and ``VIT_TRAIN_KEEP_SKLEARN=1`` turns it off.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def skip_unused_imports() -> list[str]:
    """Mark scikit-learn unavailable to transformers (if it would be imported); returns what was skipped."""
    if os.environ.get("VIT_TRAIN_KEEP_SKLEARN") == "1" or "transformers.generation" in sys.modules:
        return []
    from transformers.utils import import_utils

    if not getattr(import_utils, "_sklearn_available", False):
        return []
    import_utils._sklearn_available = False
    log.debug("transformers told scikit-learn is absent (unused by ViT training; saves its import)")
    return ["sklearn"]
