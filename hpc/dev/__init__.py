"""The local development cluster (real Debian Slurm on one host, fake GPUs) and ``make demo``."""
