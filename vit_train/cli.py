"""Command line of one fine-tuning run: parse, build, run, exit.

Every RunConfig field is a dotted flag (``--optim.lr 1e-4``); ``--config run.yaml`` gives a nested
base that flags override. The same command works alone, under ``torchrun`` and under ``srun``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import warnings
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from vit_train.config import SECTIONS, ConfigError, RunConfig, apply_dotted, valid_dotted_keys

EXIT_OK, EXIT_CONFIG, EXIT_PREEMPTED = 0, 2, 3


def _field_docs() -> dict[str, str]:
    """Per-field help text from the dataclass docstrings (the attribute docstring under each field)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for prefix, cls in [("", RunConfig), *[(f"{n}.", c) for n, c in SECTIONS.items()]]:
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[prefix + a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[attr-defined]
    return docs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vit_train",
        description="Fine-tune a Hugging Face ViT with a ColossalAI plugin. Runs alone, under torchrun "
        "(torchrun --nproc_per_node N -m vit_train ...) or under srun (one task per GPU). Resumes "
        "automatically from the newest complete checkpoint in --output_dir.",
        # Not ArgumentDefaultsHelpFormatter: a field flag's argparse default is None (so that only the
        # flags given override --config); its help names RunConfig's default itself, once.
        usage="python -m vit_train [-h] [--config RUN.yaml] [--print-config] [--SECTION.FIELD V ...]",
    )
    p.add_argument("--config", type=Path, help="YAML file with a nested run config; flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    defaults = RunConfig().flat()
    docs = _field_docs()
    for key in valid_dotted_keys():
        if key in SECTIONS:
            continue
        p.add_argument(f"--{key}", dest=key, default=None, metavar="V",
                       help=f"{docs.get(key, '')} (default: {defaults[key]!r})")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--config {args.config}: {e}") from None
        base = loaded or {}
    overrides = {k: _parse_scalar(v) for k, v in vars(args).items() if "." in k or k in ("precision", "seed", "output_dir")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return RunConfig.from_dict(apply_dotted(RunConfig.from_dict(base).to_dict(), overrides))


def _parse_scalar(v: Any) -> Any:
    """'1e-4' -> 1e-4, 'true' -> True, '[0.9, 0.99]' -> list: YAML rules, like the grid files."""
    if v is None or not isinstance(v, str):
        return v
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


class StopFlag:
    """Set by SIGUSR2 (Slurm's warning before preemption or the time limit) and SIGTERM.

    The handler only sets a flag: the loop stops at the next step boundary on every rank together
    and saves a collective checkpoint, which a signal handler cannot do safely itself.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self, signals: Sequence[int] = (signal.SIGUSR2, signal.SIGTERM)) -> "StopFlag":
        for s in signals:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def setup_logging() -> None:
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    # Libraries (ColossalAI logs through the root logger) stay at WARNING; our own modules and
    # submitit's at INFO on rank 0 only, so a Slurm log holds one copy of each message.
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", stream=sys.stderr)
    level = logging.INFO if rank == "0" else logging.WARNING
    for ours in ("vit_train", "hpc", "submitit"):
        logging.getLogger(ours).setLevel(level)
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*is deprecated", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return EXIT_OK
    setup_logging()
    return run(cfg, StopFlag().install())


def run(cfg: RunConfig, stop: Any) -> int:
    """Build and run one training; returns the process exit code (the caller exits)."""
    from vit_train.distributed.process_group import init_distributed
    from vit_train.trainer import Trainer

    env = init_distributed(cfg.seed)
    if env.on_cuda:
        from vit_train.kernels.jit_cache import kernel_cache_from_env, use_kernel_cache

        # ColossalAI JIT-builds HybridAdam/fused kernels on first use; with a shared cache named by
        # $VIT_TRAIN_KERNEL_CACHE one job builds (under a lock that cannot go stale), others reuse.
        cache = kernel_cache_from_env()
        if cache is not None:
            use_kernel_cache(cache)
    try:
        cfg.check_world(env.world_size, env.device.type)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    trainer = Trainer(cfg, env, stop_requested=stop)
    trainer.setup()
    outcome = trainer.train()
    if env.is_main:
        print(f"run {outcome.status} at step {outcome.step}: {outcome.result}", flush=True)
    return EXIT_OK if outcome.status == "completed" else EXIT_PREEMPTED

