"""SDPA backends at ViT-B/16's attention shape (batch 256, 12 heads, 197 tokens, head size 64, bf16),
q/k/v as the strided views vit_train.kernels.fast_vit passes; forward + backward, ms per 12 layers
(run 7; not project code)."""
import time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

b, s, h, d = 256, 197, 12, 64
qkv = torch.randn(b, s, 3, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
grad = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)


def run():
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    out.backward(grad)


for name, backends in [("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]),
                       ("cudnn", [SDPBackend.CUDNN_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION])]:
    try:
        ctx = sdpa_kernel(backends) if backends else torch.autograd.graph.saved_tensors_hooks(lambda x: x, lambda x: x)
        with ctx:
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(24):
                run()
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 24 * 1000
        print(f"sdpa {name:10s} fwd+bwd {ms:.3f} ms/layer  {12 * ms:.2f} ms/step (12 layers)")
    except Exception as e:  # a backend that does not take these inputs
        print(f"sdpa {name:10s} unavailable: {str(e).splitlines()[0][:150]}")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    run()
    torch.cuda.synchronize()
print("default picks:", sorted({e.key[:80] for e in prof.key_averages() if "att" in e.key.lower() or "fmha" in e.key.lower() or "flash" in e.key.lower()}))
