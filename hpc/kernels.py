"""``python submit.py kernels --cache DIR``: build ColossalAI's JIT kernels once into a shared cache.

The cache, its lock and the loader hooks are :mod:`vit_train.kernels.jit_cache` (jobs use them too);
this is only the login-node command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vit_train.kernels.jit_cache import (
    DEFAULT_KERNELS,
    KERNEL_CACHE_ENV,
    KERNELS,
    colossalai_build_dir,
    kernel_cache_from_env,
    prepare_kernels,
)

def add_parser(subparsers: Any) -> None:
    """Register ``kernels``: build ColossalAI's JIT kernels once into a shared cache."""
    p = subparsers.add_parser(
        "kernels",
        help="build ColossalAI's JIT kernels (HybridAdam) once into a shared cache; run it on a compute node",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--cache", type=Path, default=kernel_cache_from_env(), required=kernel_cache_from_env() is None,
                   metavar="DIR", help=f"shared kernel cache folder (default ${KERNEL_CACHE_ENV}); jobs need "
                   f"{KERNEL_CACHE_ENV}=DIR in the site profile's env")
    p.add_argument("--kernel", dest="kernels", action="append", choices=list(KERNELS), metavar="NAME",
                   help=f"kernel to build (repeatable); default {' '.join(DEFAULT_KERNELS)}; one of {', '.join(KERNELS)}")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up waiting for another builder after S seconds")
    p.set_defaults(handler=cmd_kernels)


def cmd_kernels(args: argparse.Namespace) -> int:
    names = tuple(args.kernels or DEFAULT_KERNELS)
    try:
        statuses = prepare_kernels(args.cache, names, timeout_s=args.timeout)
    except (TimeoutError, RuntimeError, OSError) as e:
        print(f"error: kernels: {e}", file=sys.stderr)
        return 1
    print(f"kernel cache {colossalai_build_dir(args.cache)}")
    for st in statuses:
        print(f"  {st.name:<12} {st.state:<11} {st.seconds:7.1f} s  {st.extension or '-':<16} {st.detail}")
    print(f"jobs use it with {KERNEL_CACHE_ENV}={Path(args.cache).resolve()} in the site profile's env")
    return 1 if any(st.state == "unavailable" for st in statuses) else 0
