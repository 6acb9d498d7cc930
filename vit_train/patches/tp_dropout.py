"""Tensor-parallel dropouts of rate 0 without their RNG-state swap, so a CUDA graph can capture them.

ColossalAI 0.5.0's ViT policy replaces the dropouts of a tensor-parallel model with
``DropoutForReplicatedInput`` / ``DropoutForParallelInput``, whose forward saves the CUDA RNG state,
sets the layer's own and restores the first (``Randomizer.fork_rng``: ``get_rng_state`` and
``set_rng_state``) around every call. ``set_rng_state`` is illegal while a CUDA graph is being
captured. At rate 0 a dropout is the identity and draws no random numbers (torch returns its input
unchanged), so :func:`skip_rng_forks` gives those layers an identity forward (same outputs and
gradients, nothing else changes); a layer with a non-zero rate is refused. Used only by
``model.cuda_graph`` (:mod:`vit_train.graph_step`); ViT presets and the reference checkpoints have rate
0. Proved by ``tests/test_graph_step.py`` (tp=2: the same training with and without it).
"""

from __future__ import annotations

import torch


def skip_rng_forks(model: torch.nn.Module) -> int:
    """Give every ColossalAI tensor-parallel dropout of rate 0 in ``model`` an identity forward;
    returns how many. Raises for one with a non-zero rate."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and hasattr(module, "randomizer"):
            if module.p > 0:
                raise RuntimeError(f"model.cuda_graph with tensor parallelism: {name} is a dropout with p={module.p}, "
                                   "whose RNG-state swap cannot be captured; set the model's dropout rates to 0 "
                                   "or set model.cuda_graph: false")
            module.forward = identity
            count += 1
    return count


def identity(x: torch.Tensor) -> torch.Tensor:
    return x
