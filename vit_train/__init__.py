"""One fine-tuning run: config, data, model, the training loop and its evaluation (this folder).

Where the rest lives: ``distributed/`` (process groups, the Slurm environment reader, the parallel
layout and the ColossalAI plugin factory), ``components/`` (checkpoints, tracking, export, fault
injection, safe files), ``patches/`` (every adaptation of ColossalAI 0.5.0 to this torch and to
speed), ``kernels/`` (the ViT speed kernels and ColossalAI's JIT kernel cache), ``bench/`` (the
benchmark, ``python -m vit_train.bench``). Nothing here imports :mod:`hpc`.
"""

# Start-up of training processes (vit_train/patches/startup.py): cheap, imports nothing heavy, and
# must run before any ColossalAI or transformers import to matter.
from vit_train.patches import startup as _startup

_startup.install()
