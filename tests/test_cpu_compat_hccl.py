"""vit_train.patches.cpu_compat fix 3 on a torch built with NCCL (PyPI's CUDA torch 2.5.1, also on a
machine without a GPU): colossalai/pipeline/p2p.py:160 reads c10d.Backend.HCCL, which no torch
defines, for every gloo group, so pipeline parallelism on gloo fails in its first send.

The child process says "built with NCCL" by replacing c10d.is_nccl_available (what the CUDA wheels
answer), so the test fails without the fix on the CPU torch 2.13 of CI as on torch 2.5.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fix3_p2p_check_device_with_gloo_on_a_torch_built_with_nccl() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["unpatched_error"] == "AttributeError: type object 'Backend' has no attribute 'HCCL'"
    assert "hccl_available" in res["applied"]
    assert res["patched"] == ["cpu", False]  # gloo: buffers on the CPU, not the NCCL path
    assert res["nccl_group"] is True  # an NCCL group still takes the NCCL path


def _child() -> None:
    import torch.distributed as dist
    from colossalai.pipeline import p2p
    from torch.distributed import distributed_c10d as c10d

    from vit_train.patches.cpu_compat import apply_cpu_compat

    c10d.is_nccl_available = lambda: True  # what every CUDA build of torch answers, GPU or not
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    res = {}
    try:
        p2p._check_device(None)
        res["unpatched_error"] = ""
    except Exception as exc:
        res["unpatched_error"] = f"{type(exc).__name__}: {str(exc).split('. Did you mean')[0]}"
    res["applied"] = apply_cpu_compat()
    device, is_nccl = p2p._check_device(None)
    res["patched"] = [str(device), is_nccl]

    class _FakeNcclGroup:  # the name is all the check reads
        def name(self) -> str:
            return "nccl"

    res["nccl_group"] = p2p._check_for_nccl_hccl_backend(_FakeNcclGroup())
    dist.destroy_process_group()
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    _child()
