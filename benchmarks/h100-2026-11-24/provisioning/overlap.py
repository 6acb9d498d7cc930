"""Does CUDA set-up in a thread overlap the imports? (exploration, not project code)
overlap.py seq|thread"""
import sys, threading, time
t0 = time.time()
import torch
t1 = time.time()
mode = sys.argv[1]
marks = {}
def warm():
    s = time.time()
    torch.cuda.set_device(0)
    torch.empty(1, device="cuda")
    marks["ctx"] = time.time() - s
    a = torch.randn(512, 512, device="cuda")
    (a @ a).sum().item()
    torch.cuda.synchronize()
    marks["warm"] = time.time() - s
th = threading.Thread(target=warm) if mode == "thread" else None
if th:
    th.start()
import vit_train  # noqa
import colossalai.booster  # noqa
import transformers.models.vit.modeling_vit  # noqa
from colossalai.booster.plugin import HybridParallelPlugin, TorchDDPPlugin  # noqa
from vit_train.trainer import Trainer  # noqa
t2 = time.time()
if th:
    th.join()
else:
    warm()
t3 = time.time()
print(f"overlap {mode}: import torch {t1-t0:.2f} imports {t2-t1:.2f} then {t3-t2:.2f} (warm itself {marks['warm']:.2f}, ctx {marks['ctx']:.2f}) total {t3-t0:.2f}", flush=True)
