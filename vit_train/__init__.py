"""Fine-tune Hugging Face ViTs with ColossalAI Booster plugins: config, data, model, loop, checkpoints."""

# Before any ColossalAI import in a training process: ColossalAI's fp8 helpers get compiled on first
# use instead of at import (see vit_train/lazy_compile.py; cheap, imports nothing heavy).
from vit_train import lazy_compile as _lazy_compile

_lazy_compile.install()
