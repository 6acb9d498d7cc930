"""Start-up probe (not project code). provision.sh runs `missing --compile`; the other modes were
the import measurements of runs 14-15 (benchmarks/HISTORY.md).
  startup_probe.py missing [--compile]   modules imported by a hybrid/ddp worker that have no bytecode,
                                         by top-level package; --compile precompiles those packages
  startup_probe.py imports               seconds for import torch / the rest of a worker's imports
  startup_probe.py importtime FILE       top cumulative entries of a python -X importtime log"""
import os, subprocess, sys, time
from collections import Counter


def worker_imports():
    import torch
    import vit_train  # noqa: F401  (installs vit_train.patches.lazy_compile's hook unless switched off)
    import colossalai.booster  # noqa: F401
    import transformers.models.vit.modeling_vit  # noqa: F401
    from colossalai.booster.plugin import HybridParallelPlugin, TorchDDPPlugin  # noqa: F401
    from vit_train.bench.data import open_prepared  # noqa: F401
    from vit_train.trainer import Trainer  # noqa: F401
    return torch


mode = sys.argv[1]
if mode == "missing":
    worker_imports()
    miss, total, where = Counter(), Counter(), {}
    for name, m in list(sys.modules.items()):
        f, c = getattr(m, "__file__", None), getattr(m, "__cached__", None)
        if not isinstance(f, str) or not f.endswith(".py") or not isinstance(c, str):
            continue
        top = name.split(".")[0]
        total[top] += 1
        if not os.path.exists(c):  # (modules with no __cached__, e.g. transformers' lazy ones, skipped)
            miss[top] += 1
            base = os.path.dirname(f)
            while os.path.basename(base) != top and os.path.dirname(base) != base and "." in name:
                base = os.path.dirname(base)
            where[top] = base if os.path.basename(base) == top else f
    print("modules imported:", sum(total.values()), "without bytecode:", sum(miss.values()))
    print("by package:", [(k, v, total[k]) for k, v in miss.most_common(25)])
    if "--compile" in sys.argv:
        t = time.time()
        for top, path in where.items():
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", path], capture_output=True)
        print(f"compiled {len(where)} packages in {time.time() - t:.1f}s: {sorted(where.values())[:40]}")
elif mode == "imports":
    t0 = time.time()
    import torch  # noqa: F401
    t1 = time.time()
    worker_imports()
    t2 = time.time()
    print(f"as_shipped={os.environ.get('VIT_TRAIN_COLOSSALAI_AS_SHIPPED', '0')} import torch {t1 - t0:.2f} s, "
          f"the rest {t2 - t1:.2f} s, inductor imported {'torch._inductor.compile_fx' in sys.modules}")
elif mode == "importtime":
    rows = []
    for line in open(sys.argv[2]):
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    for cum, self_us, name in sorted(rows, reverse=True)[:45]:
        print(f"{cum / 1e6:6.2f} {self_us / 1e6:5.2f} {name}")
