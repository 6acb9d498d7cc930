"""Bitwise-repeatable GPU training for one run (``model.deterministic``).

By default a GPU run is not bitwise repeatable: PyTorch's flash and memory-efficient attention
backwards and cuDNN's attention accumulate with atomics, cuBLAS may split a product's reduction
differently per call, and cuDNN may pick convolution algorithms by timing. Over the few hundred
steps of a reference grid point, those last-bit differences grow into different final accuracies
(run 36: the same Gemini configuration twice on one H200, up to 0.045 apart at batch 16 and 32).

``model.deterministic: true`` selects PyTorch's deterministic mode strictly (``warn_only=False``):
only then does PyTorch run the flash-attention backward in its deterministic variant and leave cuDNN
attention out, while an operator without a deterministic implementation raises instead of silently
breaking the promise. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first handle is made,
which is why :class:`vit_train.trainer.Trainer` applies this before it builds anything.
It is a how-not-what option (not in the run signature), like ``model.compile``.
"""

from __future__ import annotations

import os

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")
"""The two workspace settings for which cuBLAS promises repeatable results (NVIDIA's cuBLAS docs)."""


def use_deterministic_algorithms(enabled: bool) -> None:
    """Switch this process to deterministic kernels when ``enabled`` (a no-op otherwise).

    Raises ValueError when the environment already sets a cuBLAS workspace that breaks the promise:
    overriding the user's setting silently would hide why their runs differ."""
    if not enabled:
        return
    current = os.environ.get(CUBLAS_ENV)
    if current is not None and current not in DETERMINISTIC_CUBLAS:
        raise ValueError(
            f"model.deterministic=true but {CUBLAS_ENV}={current!r} in the environment: cuBLAS is repeatable only "
            f"with {' or '.join(DETERMINISTIC_CUBLAS)}; unset it or set one of those")
    os.environ.setdefault(CUBLAS_ENV, DETERMINISTIC_CUBLAS[0])
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def state() -> dict[str, object]:
    """What this process runs with (recorded in the run's setup log line and by the repeat check)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        CUBLAS_ENV: os.environ.get(CUBLAS_ENV),
    }
