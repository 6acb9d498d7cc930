"""Fine-tune Hugging Face ViTs with ColossalAI Booster plugins: config, data, model, loop, checkpoints."""

import os as _os

# Start-up of training processes (BENCHMARKS.md, start-up); both are cheap and import nothing heavy.
# 1. vit_train trains with PyTorch only: unless the user says otherwise, transformers skips its Flax
#    support, whose image utilities otherwise import jax where it is installed (0.7 s on the H100 host).
_os.environ.setdefault("USE_FLAX", "0")

# 2. Before any ColossalAI import: its import-time torch.compile decorations get compiled on first use
#    instead (vit_train/lazy_compile.py).
from vit_train import lazy_compile as _lazy_compile  # noqa: E402

_lazy_compile.install()
