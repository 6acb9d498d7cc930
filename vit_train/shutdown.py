"""Deterministic process exit for distributed (gloo/nccl) training processes.

Why: on CPU, a few percent of otherwise successful ColossalAI runs abort at interpreter exit with
"terminate called without an active exception" (SIGABRT, so torchrun reports failure) even after
``destroy_process_group``. The abort happens during interpreter teardown, when C++ objects that
own native threads (process groups that ColossalAI's ProcessGroupMesh/plugins still reference,
torch's c10d/gloo and intra-op thread pools) are destroyed in an arbitrary order by
garbage collection and static destructors. Leaving through ``os._exit`` after an explicit barrier
and ``destroy_process_group`` skips that teardown entirely, so the exit code is the one we chose.

Because ``os._exit`` skips ``atexit`` handlers and ``finally`` blocks further up the stack, close
or flush everything that matters (TensorBoard writers, checkpoint files, log files) before
calling :func:`clean_exit`; standard streams and ``logging`` handlers are flushed here.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def clean_exit(code: int = 0) -> NoReturn:
    """Synchronise ranks (on success), tear down the process group, flush, and ``os._exit(code)``.

    On failure (``code != 0``) no collective is attempted, since peers may be gone and a barrier
    would hang; the process group is left for the OS to reclaim.
    """
    try:
        import torch.distributed as dist

        if code == 0 and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception as exc:  # a failed teardown must not turn into a hang or a lost exit code
        print(f"clean_exit: process group teardown failed: {exc!r}", file=sys.stderr)
        code = code or 1
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
