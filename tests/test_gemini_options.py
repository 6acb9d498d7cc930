"""GeminiPlugin options vit_train chooses: asynchronous gradient reduction only with several ranks.

With one rank there is nothing to reduce, and the reduction side stream costs host time per
parameter gradient (BENCHMARKS.md, Gemini). The plugin itself is built for real under ``torchrun``
(gloo, CPU): GeminiPlugin's constructor runs here; training with it needs CUDA (tested on the H100,
see BENCHMARKS.md), so only the options it was given are checked. RunConfig.check_world refuses Gemini
on CPU, so the child calls ``vit_train.distributed.plugins._gemini`` directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def test_async_reduce_only_with_several_ranks() -> None:
    from tests.train_utils import run_torchrun_child

    one = run_torchrun_child(Path(__file__), nproc=1, timeout=240)
    assert one == {"world": 1, "async_reduce": False, "pin_memory": True,
                   "as_shipped": {"async_reduce": True, "pin_memory": True}}, one
    two = run_torchrun_child(Path(__file__), nproc=2, timeout=240)
    assert two["world"] == 2 and two["async_reduce"] is True and two["pin_memory"] is True, two


def _child() -> dict[str, Any]:
    import torch.distributed as dist

    from vit_train.distributed import plugins
    from vit_train.config import RunConfig

    dist.init_process_group("gloo")
    cfg = RunConfig.from_dict({"parallel": {"plugin": "gemini"}, "precision": "bf16",
                               "optim": {"optimizer": "hybrid_adam"}})

    def options() -> dict[str, Any]:
        g = plugins._gemini(cfg, on_cuda=False).gemini_config
        return {"async_reduce": g["enable_async_reduce"], "pin_memory": g["pin_memory"]}

    out: dict[str, Any] = {"world": dist.get_world_size(), **options()}
    os.environ["VIT_TRAIN_COLOSSALAI_AS_SHIPPED"] = "1"
    out["as_shipped"] = options()
    return out


if __name__ == "__main__":
    from tests.train_utils import child_main

    child_main(_child)
