"""Let ColossalAI's ZeRO gradient buckets hold gradients of several parameter groups.

ColossalAI 0.5.0's ``LowLevelZeroOptimizer`` (LowLevelZeroPlugin, and HybridParallelPlugin with
zero_stage >= 1) reduces a bucket of gradients whenever it is full *or* when the next gradient
belongs to another optimizer parameter group. The usual fine-tuning groups (weight decay on
matrices, none on biases and LayerNorm) alternate parameter by parameter in backward order, so
every gradient ends the bucket: ViT-B/16 ran ~150 flatten + reduce-scatter + bookkeeping rounds per
step instead of ~8. On one GPU their host work hides behind the backward still running on the GPU (an
A/B on one H100 measured no throughput change, BENCHMARKS.md); between GPUs each round is a collective,
and with ``overlap_communication`` the point is to overlap a few large ones, not ~150 small ones.

The bucket itself does not need one group: only the gradient store, which files each reduced
gradient slice under ``group_id``, does. This module changes two methods:

- ``_add_to_bucket`` reduces when the bucket is full, not when the group changes;
- ``_add_grad`` files each slice under the group of *its* parameter (looked up once per
  optimizer), instead of the group of the last gradient that entered the bucket.

Everything else (the flattening, the collective, the padding, the step) is ColossalAI's code.
``tests/test_zero_buckets.py`` checks the effect (rounds per step) and the result (ZeRO-1/2 with
weight decay equal to DDP on the same data). Applied only to the version it was written for.
"""

from __future__ import annotations

from typing import Any

from vit_train.patches.patching import patch_once


def _group_of(opt: Any, param_id: int) -> int:
    table = getattr(opt, "_vit_train_group_of", None)
    if table is None:
        table = {id(p): gid for gid, params in opt._working_param_groups.items() for p in params}
        opt._vit_train_group_of = table
    return table[param_id]


def apply_zero_bucket_fix() -> bool:
    """Patch ``LowLevelZeroOptimizer`` once per process; False if this ColossalAI is another version."""
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    def methods() -> dict[str, Any]:
        original_add_grad = LowLevelZeroOptimizer._add_grad

        def _add_to_bucket(self: Any, param: Any, group_id: int) -> None:
            store = self.pid_to_bucket_store[id(param)]
            if store.num_elements_in_bucket() + param.numel() > self._reduce_bucket_size:
                self._run_reduction()
            store.add_param_grad(group_id, param, self.get_param_padding_size(param))

        def _add_grad(self: Any, grad: Any, partition_num: int, group_id: int, param_id: int, rank: int = 0) -> None:
            original_add_grad(self, grad, partition_num, _group_of(self, param_id), param_id, rank)

        return {"_add_to_bucket": _add_to_bucket, "_add_grad": _add_grad}

    return patch_once("ZeRO bucket fix", LowLevelZeroOptimizer, methods)
