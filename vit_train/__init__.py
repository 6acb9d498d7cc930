"""Fine-tune Hugging Face ViTs with ColossalAI Booster plugins: config, data, model, loop, checkpoints."""

# Start-up of training processes (vit_train/startup.py): cheap, imports nothing heavy, and must run
# before any ColossalAI or transformers import to matter.
from vit_train import startup as _startup

_startup.install()
