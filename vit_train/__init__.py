"""Fine-tune Hugging Face ViTs with ColossalAI Booster plugins: config, data, model, loop, checkpoints."""
