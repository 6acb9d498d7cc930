"""Where parallelism lives: process groups and collectives, the Slurm environment reader, the
parallel layout config, the ColossalAI Booster plugin factory and a deterministic process exit.
Model and data code import nothing from here."""
