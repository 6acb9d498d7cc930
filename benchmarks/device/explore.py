"""Exploration on the GPU (not project code). Grew over runs 3-24 as provisioning/explore2.py (runs 8
and 12 ran it as explore3.py); imports follow the current module layout. Run it through the driver:
  bash benchmarks/device/run.sh script benchmarks/device/explore.py MODE ARGS
Modes:
  variant PREC:MODE[:flag...]   plain-PyTorch ViT-B/16 step. PREC autocast|bf16m (bf16 weights + fp32 masters);
                                MODE default|max-autotune-no-cudagraphs|max-autotune|reduce-overhead|eager;
                                flags: fast (vit_train.kernels.fast_vit forwards), nocls (last layer on every token),
                                fusedmlp (the fused MLP operator; FUSED_CFG=a,b,c,d,e sets its launch configuration),
                                gelutb (opaque GELU forward, backward visible to inductor), sepqkv, cdt, b512
  hostprof CONFIG               cProfile of 5 trainer steps of a bench configuration (e.g. zero2, hybrid)
  kernels CONFIG                every GPU kernel of 3 profiled trainer steps, and the ops that launch the small ones
  init                          vit_b16 build: default vs no_init_weights + init_weights
  steptimes CONFIG [N] [freeze] ms/step per block of 10 steps over N steps (host-bound drift,
                                garbage collections per block); freeze: gc.freeze() after warm-up
  loops CONFIG                  one process, 20-step blocks of four loop patterns in turn: discard the
                                returned loss / hold it / hold it and accumulate its value / bench _timed
The flag gelu (the opaque GELU operator of runs 12-19) is gone with that operator."""
import json, sys, time, os
mode_arg = sys.argv[1]

def variant(spec):
    import torch, torch.nn.functional as F
    from vit_train.bench.worker import _profile
    from vit_train.config import ModelConfig
    from vit_train.model import build_model
    from vit_train.kernels.fast_vit import apply_fast_forwards
    prec, mode, *flags = spec.split(":")
    if "cdt" in flags:
        import torch._inductor.config as ic
        ic.coordinate_descent_tuning = True
    dev = torch.device("cuda")
    B = 512 if "b512" in flags else 256
    N = 4 * B
    g = torch.Generator().manual_seed(0)
    y_all = (torch.randperm(N, generator=g) % 3).to(dev)
    x_all = (torch.randn(N, 3, 224, 224, generator=g) * 0.5).half().to(dev)
    torch.manual_seed(42)
    model = build_model(ModelConfig(name="vit_b16"), ["a", "b", "c"]).to(dev)
    if "gelu" in flags:
        sys.exit("explore.py: the opaque GELU (flag gelu) was removed in run 21; use fusedmlp")
    if "fast" in flags:
        apply_fast_forwards(model, cls_only_last_layer="nocls" not in flags)
    if "fusedmlp" in flags or "gelutb" in flags:
        # fifth session: the MLP's first product + GELU as vit_train.kernels.fused_mlp's operator (fusedmlp), or
        # the opaque GELU forward with a backward inductor can see and fuse with the bias sum (gelutb)
        import types
        from transformers.models.vit.modeling_vit import ViTIntermediate
        from vit_train.kernels import fused_mlp
        from vit_train.kernels.fused_mlp import linear_gelu_autocast
        if os.environ.get("FUSED_CFG"):
            fused_mlp.CONFIG = tuple(int(v) for v in os.environ["FUSED_CFG"].split(","))
            print("fused_mlp.CONFIG", fused_mlp.CONFIG, flush=True)
        if "gelutb" in flags:
            @torch.library.custom_op("explore::gelu", mutates_args=())
            def gelu_tb(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.aten.gelu.default(x)
            gelu_tb.register_fake(lambda x: torch.empty_like(x))
            def _setup(ctx, inputs, output):
                ctx.save_for_backward(inputs[0])
            def _bw(ctx, g):
                (x,) = ctx.saved_tensors
                cdf = 0.5 * (1.0 + torch.erf(x.float() * 0.7071067811865476))
                pdf = torch.exp(-0.5 * x.float() * x.float()) * 0.3989422804014327
                return (g.float() * (cdf + x.float() * pdf)).to(g.dtype)
            gelu_tb.register_autograd(_bw, setup_context=_setup)
            fwd = lambda self, hs: gelu_tb(self.dense(hs))
        else:
            fwd = lambda self, hs: linear_gelu_autocast(hs, self.dense.weight, self.dense.bias)
        for m in model.modules():
            if isinstance(m, ViTIntermediate):
                m.forward = types.MethodType(fwd, m)
    if "sepqkv" in flags:
        import types
        from transformers.models.vit.modeling_vit import ViTSelfAttention

        def sep(self, hs, head_mask=None, output_attentions=False):
            b, s, _ = hs.shape
            h, d = self.num_attention_heads, self.attention_head_size
            q, k, v = (lin(hs).view(b, s, h, d).transpose(1, 2) for lin in (self.query, self.key, self.value))
            ctx = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
            return (ctx.transpose(1, 2).reshape(b, s, h * d),)
        for m in model.modules():
            if isinstance(m, ViTSelfAttention):
                m.forward = types.MethodType(sep, m)
    params = list(model.parameters())
    if prec == "bf16m":
        model.to(torch.bfloat16)
        masters = [p.detach().float().clone() for p in params]
        for m in masters:
            m.grad = torch.zeros_like(m)
        opt = torch.optim.AdamW(masters, lr=2e-4, fused=True)
    else:
        opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    t0 = time.time()
    if mode != "eager":
        model.compile(mode=None if mode == "default" else mode)
    print("variant", spec, "batch", B, flush=True)
    ac = torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "autocast")
    xdt = torch.bfloat16 if prec == "bf16m" else torch.float16
    def step(s):
        idx = torch.randint(0, N, (B,), device=dev)
        with ac:
            logits = model(pixel_values=x_all[idx].to(xdt)).logits
        loss = F.cross_entropy(logits.float(), y_all[idx]); loss.backward()
        if prec == "bf16m":
            torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
            torch.nn.utils.clip_grad_norm_(masters, 1.0, foreach=True); opt.step()
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
            for p in params:
                p.grad = None
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    step(0); torch.cuda.synchronize(); first = time.time() - t0
    for s in range(1, 8): step(s)
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(30): step(s)
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 30
    prof = _profile(step, 0, dev)
    print(json.dumps({"variant": spec, "img_per_s": round(B / dt), "ms_per_256": round(1000 * dt * 256 / B, 1), "first_step_s": round(first, 1),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1), "gpu_ms": prof["gpu_ms_by_group"],
                      "top": prof["top_kernels_ms_per_step"][:12]}), flush=True)

def _trainer(name, warmup, steps):
    """A bench configuration's Trainer step as the bench worker builds it (ViT-B/16, batch 256, its own
    synthetic cache); the cosine schedule spans warmup + 2 * steps + 3 steps, as in the bench."""
    import argparse, tempfile
    from pathlib import Path
    from vit_train.bench import runner as bench, worker as bench_worker
    from vit_train.bench.data import write_synthetic_splits
    c = next(c for c in bench.CONFIGS if c.name == name)
    work = Path(tempfile.mkdtemp())
    data_dir = write_synthetic_splits(work / "data", 1024, 512, 224)
    a = argparse.Namespace(batch_size=256, warmup=warmup, steps=steps, model="vit_b16", profile=set())
    return bench_worker._trainer_setup(bench._spec(c, a, data_dir, work / "run", steps, warmup))

def _exit():
    from vit_train.distributed.shutdown import clean_exit
    sys.stdout.flush(); clean_exit(0)

def hostprof(name):
    import cProfile, pstats, io
    step, state = _trainer(name, warmup=5, steps=10)
    import torch
    for s in range(5): step(s)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(5, 15): step(s)
    torch.cuda.synchronize(); print(name, "ms/step", round(100 * (time.perf_counter() - t), 1))
    pr = cProfile.Profile(); pr.enable()
    for s in range(15, 20): step(s)
    torch.cuda.synchronize(); pr.disable()
    out = io.StringIO(); pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(22); print(out.getvalue()[-6000:])
    out = io.StringIO(); pstats.Stats(pr, stream=out).sort_stats("cumtime").print_stats(30); print(out.getvalue()[-7000:])
    _exit()

def steptimes(name, n=60, freeze=False):
    import gc
    step, state = _trainer(name, warmup=10, steps=n)
    import torch
    for s in range(10): step(s)
    if freeze:
        gc.collect(); gc.freeze()
    torch.cuda.synchronize()
    blocks = []
    for b in range(n // 10):
        g0 = gc.get_stats()[2]["collections"]; t = time.perf_counter()
        for s in range(10 + 10 * b, 20 + 10 * b): step(s)
        torch.cuda.synchronize()
        blocks.append((round(100 * (time.perf_counter() - t), 1), gc.get_stats()[2]["collections"] - g0))
    print(name, "freeze" if freeze else "", "ms/step per 10-step block (gen2 collections):", blocks, flush=True)
    _exit()

def loops(name):
    step, state = _trainer(name, warmup=10, steps=100)
    import torch
    dev = state["device"]
    for s in range(10): step(s)
    s0, res = 10, {}
    def discard(n):
        for s in range(s0, s0 + n): step(s)
    def hold(n):
        for s in range(s0, s0 + n): loss = step(s)
    def hold_acc(n):
        acc = torch.zeros((), dtype=torch.float64, device=dev)
        for s in range(s0, s0 + n):
            loss = step(s); acc += loss.detach().double()
        print("  acc type", type(acc).__name__, "loss type", type(loss).__name__, "grad_fn", type(loss.grad_fn).__name__, flush=True) if not res else None
    for rnd in range(2):
        for label, fn in (("discard", discard), ("hold", hold), ("hold_acc", hold_acc), ("bench_timed", None)):
            torch.cuda.synchronize(); t = time.perf_counter()
            if fn is None:
                from vit_train.bench import worker as bench_worker

                sec = bench_worker._timed(step, s0, 20, dev)
            else:
                fn(20); torch.cuda.synchronize(); sec = time.perf_counter() - t
            res.setdefault(label, []).append(round(1000 * sec / 20, 1)); s0 += 20
    print(name, "ms/step by loop pattern (2 rounds):", res, flush=True)
    _exit()

def kernels(name):
    """Every GPU kernel of 3 profiled steps of a bench configuration (ms per step, calls per step),
    and the step's GPU-busy vs wall time, to compare a plugin's step with the plain loop's."""
    step, state = _trainer(name, warmup=10, steps=10)
    import torch
    from torch.profiler import ProfilerActivity, profile
    for s in range(10): step(s)
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(10, 20): step(s)
    torch.cuda.synchronize(); print(name, "ms/step", round(100 * (time.perf_counter() - t), 1), flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for s in range(20, 23): step(s)
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    ev.sort(key=lambda e: -e.self_device_time_total)
    print("gpu ms/step total", round(sum(e.self_device_time_total for e in ev) / 3000, 2))
    for e in ev[:70]:
        print(f"{e.self_device_time_total / 3000:8.3f} {e.count // 3:5d}  {e.key[:150]}")
    # where the many small launches come from: for the CPU ops called ~200 times per step, the chain
    # of enclosing CPU ops/ranges (autograd nodes included), counted per step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for s in range(23, 26): step(s)
        torch.cuda.synchronize()
    from collections import Counter
    chains = Counter()
    for e in prof.events():
        if e.name in ("aten::mul", "aten::copy_", "cudaMemsetAsync", "cudaMemcpyAsync", "aten::zero_", "aten::fill_",
                      "aten::unsqueeze", "aten::clone", "aten::mul_", "aten::add_", "aten::zeros", "aten::sum"):
            chain, p = [e.name], e.cpu_parent
            while p is not None and len(chain) < 7:
                chain.append(p.name[:70]); p = p.cpu_parent
            chains[" <- ".join(chain)] += 1
    print("== enclosing ops of frequent small ops (calls per step)")
    for c, n in chains.most_common(40):
        if n >= 6:
            print(f"{n / 3:7.1f}  {c}")
    _exit()

def init():
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.modeling_utils import no_init_weights
    from vit_train.model_shapes import PRESETS
    cfg = ViTConfig(**PRESETS["vit_b16"], num_labels=3)
    for i in range(2):
        t = time.time(); ViTForImageClassification(cfg); a = time.time() - t
        t = time.time()
        with no_init_weights():
            m = ViTForImageClassification(cfg)
        m.init_weights(); print(f"init default {a:.2f}s, hf-only {time.time() - t:.2f}s, threads {torch.get_num_threads()}", flush=True)

{"variant": lambda: variant(sys.argv[2]), "hostprof": lambda: hostprof(sys.argv[2]), "init": init,
 "loops": lambda: loops(sys.argv[2]), "kernels": lambda: kernels(sys.argv[2]),
 "steptimes": lambda: steptimes(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 60, "freeze" in sys.argv[4:])}[mode_arg]()
