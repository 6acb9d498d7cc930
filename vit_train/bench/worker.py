"""One benchmark configuration in its own process (spawned by :mod:`vit_train.bench.runner`).

A worker records wall-clock marks from the moment the parent spawned it (``BENCH_T0``) through the
imports, set-up and first optimizer step, then warms up (recording each step's loss for the
comparison with the fp32 reference), then times ``steps`` steps between two device
synchronisations. Two kinds:

- ``torch``: plain PyTorch, no ColossalAI imported: the HF ViT with SDPA, bf16 autocast (or fp32
  for the reference), fused AdamW, gradient clipping, cosine schedule, batches gathered on the GPU;
- ``trainer``: the project's :class:`vit_train.trainer.Trainer` built exactly as the CLI builds it,
  fed the synthetic cache through ``Trainer.setup(data=...)``; steps are ``Trainer.train_step``
  plus the loop's per-step stop check.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

T0 = float(os.environ.get("BENCH_T0", time.time()))
MARKS: dict[str, float] = {"interpreter": time.time()}


def _mark(name: str) -> None:
    MARKS[name] = time.time()


def run_worker(spec: dict[str, Any], result_path: Path) -> None:
    import torch

    _mark("import_torch")
    cfg = spec["config"]
    step, state = (_trainer_setup if cfg["kind"] == "trainer" else _torch_setup)(spec)
    result = _measure(spec, step, state)
    if state.get("rank", 0) == 0:
        result["startup_marks"] = _phases()
        result["start_to_first_step_s"] = MARKS["first_step"] - T0
        result["setup_seconds"] = state.get("setup_seconds", {})
        result["world_size"] = state.get("world_size", 1)
        tr = state.get("trainer")
        if tr is not None:  # what the row trained with: DDP around the model, the graph's own all-reduce
            from torch.nn.parallel import DistributedDataParallel

            result["ddp_wrapped"] = any(isinstance(m, DistributedDataParallel) for m in tr.model.modules())
            result["graph_grad_sync"] = tr.graph is not None and tr.graph.grad_sync is not None
        if torch.cuda.is_available():
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["compile_counters"] = _compile_counters()
        result_path.write_text(json.dumps(result, indent=1))


def _phases() -> dict[str, float]:
    out, prev = {}, T0
    for name, t in MARKS.items():
        out[name] = round(t - prev, 3)
        prev = t
    return out


def _compile_counters() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {f"{group}.{k}": int(v) for group in ("inductor", "aot_autograd") for k, v in counters[group].items()
            if "cache" in k}


# ---------------------------------------------------------------------------------------- the project
def _trainer_setup(spec: dict[str, Any]) -> tuple[Callable[[int], Any], dict[str, Any]]:
    import colossalai.booster  # noqa: F401  (timed on its own: the largest import)

    from vit_train.config import RunConfig
    from vit_train.distributed.process_group import init_distributed
    from vit_train.trainer import Trainer

    _mark("import_colossalai_transformers")
    from vit_train.bench.graph_check import force_one_rank_sync

    force_one_rank_sync()  # the *_sync1 rows only
    cfg = RunConfig.from_dict(spec["run_config"])
    env = init_distributed(cfg.seed)
    _mark("init_distributed")
    from vit_train.bench.data import open_prepared

    prepared = open_prepared(Path(spec["data_dir"]))
    _mark("open_data")
    tr = Trainer(cfg, env)
    tr.setup(data=prepared)
    _mark("setup")
    spe = tr.order.steps_per_epoch
    perms: dict[int, Any] = {}

    def step(s: int) -> Any:
        epoch = s // spe
        if epoch not in perms:
            perms.clear()
            perms[epoch] = tr.order.epoch_permutation(epoch)
        loss, _ = tr.train_step(perms[epoch], s % spe)
        tr._should_stop()  # the loop's per-step check (a collective only with several ranks)
        return loss

    # counts_loss: Trainer.train_step adds its loss into the interval sum itself (inside the graph with
    # model.cuda_graph), so the timing loop does not add it a second time.
    return step, {"trainer": tr, "rank": env.rank, "world_size": env.world_size, "device": env.device, "counts_loss": True,
                  "setup_seconds": tr.setup_seconds}


# ---------------------------------------------------------------------------------------- plain PyTorch
def _torch_setup(spec: dict[str, Any]) -> tuple[Callable[[int], Any], dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from transformers import get_cosine_schedule_with_warmup

    from vit_train.bench.data import CLASS_NAMES, load_split
    from vit_train.config import ModelConfig
    from vit_train.model import build_model
    from vit_train.sampling import TrainOrder

    _mark("import_transformers")
    c = spec["config"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not c["autocast"]:  # the fp32 reference: true fp32 products
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    x, y = load_split(Path(spec["data_dir"]), "train")
    x, y = x.to(device), y.to(device)
    _mark("open_data")
    torch.manual_seed(spec["seed"])  # the same initial weights as the trainer's
    model = build_model(ModelConfig(name=spec["model"]), list(CLASS_NAMES), device).to(device)
    params = list(model.parameters())
    # bf16 weights: the model computes in bf16, an fp32 master copy takes the optimizer step
    # (what hybrid_parallel, ZeRO and Gemini do, here without any per-parameter Python loop).
    masters = [p.detach().float().clone() for p in params] if c["bf16_weights"] else params
    if c["bf16_weights"]:
        model.to(torch.bfloat16)
        for m in masters:
            m.grad = torch.zeros_like(m)
    opt = torch.optim.AdamW([{"params": [m for m in masters if m.ndim > 1]}, {"params": [m for m in masters if m.ndim <= 1]}],
                            lr=spec["lr"], weight_decay=0.0, fused=device.type == "cuda" or None, capturable=c["graph"])
    sched = get_cosine_schedule_with_warmup(opt, 0, spec["total_steps"])  # as the trainer's
    if c["compile"]:
        model.compile()
    model.train()
    order = TrainOrder(len(y), spec["batch_size"], spec["seed"])
    spe = order.steps_per_epoch
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=c["autocast"] and not c["bf16_weights"])
    _mark("setup")
    if c["graph"]:
        return _torch_graph_step(spec, model, opt, sched, x, y, order), {"device": device}

    def step(s: int) -> Any:
        idx = order.batch_indices(order.epoch_permutation(s // spe), s % spe, 0, 1).to(device, non_blocking=True)
        with autocast:
            logits = model(pixel_values=x[idx]).logits
        loss = F.cross_entropy(logits.float(), y[idx])
        loss.backward()
        if masters is not params:
            torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
        torch.nn.utils.clip_grad_norm_(masters, spec["max_grad_norm"])
        opt.step()
        if masters is not params:
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
        for p in params:
            p.grad = None
        sched.step()
        return loss

    return step, {"device": device}


def _torch_graph_step(spec: dict[str, Any], model: Any, opt: Any, sched: Any, x: Any, y: Any, order: Any) -> Callable[[int], Any]:
    """The plain-PyTorch step above (autocast variant) captured whole as one CUDA graph: the same
    warm-up/capture/replay bookkeeping as the Trainer's model.cuda_graph, with none of its plugin."""
    import torch
    import torch.nn.functional as F

    from vit_train.graph_step import CapturedStep, CudaSeam

    params = list(model.parameters())
    static_idx = torch.zeros(spec["batch_size"], dtype=torch.int64, device=x.device)
    static_loss = torch.zeros((), device=x.device)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def body() -> None:
        with autocast:
            logits = model(pixel_values=x.index_select(0, static_idx)).logits
        loss = F.cross_entropy(logits.float(), y.index_select(0, static_idx))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"], foreach=True)
        opt.step()
        static_loss.copy_(loss.detach())

    captured = CapturedStep(body, lambda: opt.zero_grad(set_to_none=True), opt.param_groups, static_idx, CudaSeam(x.device))
    spe = order.steps_per_epoch

    def step(s: int) -> Any:
        captured(order.batch_indices(order.epoch_permutation(s // spe), s % spe, 0, 1))
        sched.step()
        return static_loss

    return step


# ---------------------------------------------------------------------------------------- timing
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[int], Any], first: int, n: int, device: Any, extra: Callable[[], Any] | None = None,
           count_loss: bool = True) -> float:
    import torch

    acc = torch.zeros((), dtype=torch.float64, device=device)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(first, first + n):
        loss = step(s)
        if loss is not None and count_loss:  # what the Trainer's loop adds per step
            acc += loss.detach().double()
        if extra is not None:
            extra()
    _sync(device)
    return time.perf_counter() - t0


def host_probe_ms() -> float:
    """Milliseconds for a fixed pure-Python workload (best of 3), taken before and after the timed
    steps: the host's speed while a row ran. Host-bound rows (Gemini: Python hooks on every
    parameter operation) move with it; the machines are shared and it varies between rows."""
    best = float("inf")
    for _ in range(3):
        t, d = time.perf_counter(), {}
        for i in range(100_000):
            d[i & 1023] = d.get(i & 1023, 0) + i
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def _measure(spec: dict[str, Any], step: Callable[[int], Any], state: dict[str, Any]) -> dict[str, Any]:
    device = state["device"]
    losses = []
    for s in range(spec["warmup"]):
        loss = step(s)
        losses.append(float(loss.detach()) if loss is not None else float("nan"))  # a sync per warm-up step
        if s == 0:
            _mark("first_step")
    _mark("warmup")
    steps, images = spec["steps"], spec["global_batch"]
    out: dict[str, Any] = {"warmup_losses": losses, "steps": steps, "global_batch": images}
    if steps > 0:
        probe_before = host_probe_ms()
        count_loss = not state.get("counts_loss", False)
        seconds = _timed(step, spec["warmup"], steps, device, count_loss=count_loss)
        out.update(step_ms=1000 * seconds / steps, img_per_s=steps * images / seconds,
                   host_probe_ms=[round(probe_before, 2), round(host_probe_ms(), 2)])
        if spec["config"].get("measure_sync"):
            from vit_train.distributed.process_group import any_rank

            # The multi-rank stop check: a collective on a fresh device tensor and .item() every step.
            seconds = _timed(step, spec["warmup"] + steps, steps, device, lambda: any_rank(False, device), count_loss)
            out["img_per_s_with_stop_sync"] = steps * images / seconds
    if spec.get("profile") and device.type == "cuda":
        out["profile"] = _profile(step, spec["warmup"] + 2 * steps, device)
    return out


_KERNEL_GROUPS = (  # kernel-name patterns, first match wins
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("attention", ("sdpa", "flash", "fmha", "attention", "attn")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "l2norm")),
    ("communication", ("nccl",)),
    ("compiled_fused", ("triton",)),
)


def _profile(step: Callable[[int], Any], first: int, device: Any, num_steps: int = 3) -> dict[str, Any]:
    """GPU time per step by kernel group, the busiest kernels, and how much of the wall time the GPU
    was busy (a step whose GPU time is well under its wall time is bound by the CPU or syncs)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for s in range(first, first + num_steps):
            step(s)
        _sync(device)
    wall_ms = 1000 * (time.perf_counter() - t0) / num_steps
    events = prof.key_averages()
    cpu_names = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CPU}
    # GPU-side copies of CPU annotations (e.g. "DistributedDataParallel.forward") span kernels: skip
    # them; Triton kernels also carry a CPU launch record of their own name, so keep those.
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and (e.key not in cpu_names or e.key.startswith("triton"))]
    groups: dict[str, float] = {}
    for e in kernels:
        name = e.key.lower()
        group = next((g for g, pats in _KERNEL_GROUPS if any(p in name for p in pats)), "other_elementwise")
        groups[group] = groups.get(group, 0.0) + e.self_device_time_total / 1000 / num_steps
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:15]
    return {
        "wall_ms_per_step": wall_ms,
        "gpu_ms_per_step": sum(groups.values()),
        "gpu_ms_by_group": {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [(e.key[:90], round(e.self_device_time_total / 1000 / num_steps, 2), e.count // num_steps)
                                    for e in top],
    }


def probe(spec: dict[str, Any], result_path: Path) -> None:
    """The device, the measured matrix-product ceiling, the synthetic cache and the data benchmark."""
    import platform
    import subprocess

    import torch

    from vit_train.bench.data import data_rates, matmul_tflops, write_synthetic_splits
    from vit_train.versions import library_versions

    data_dir = write_synthetic_splits(Path(spec["data_dir"]), spec["num_train"], spec["num_eval"], spec["image_size"])
    out: dict[str, Any] = {"versions": library_versions(), "torch_cuda": torch.version.cuda,
                           "cpu": platform.processor() or platform.machine(), "num_cpus": os.cpu_count()}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(device=props.name, num_gpus=torch.cuda.device_count(), gpu_mem_gib=props.total_memory / 2**30,
                   sm_count=props.multi_processor_count)
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30, check=False).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = "unknown"
        out["matmul_tflops_bf16"] = matmul_tflops(device)
    else:
        out.update(device="cpu", num_gpus=0)
    out["data_rates_img_per_s"] = data_rates(data_dir, spec["batch_size"], device)
    result_path.write_text(json.dumps(out, indent=1))


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec["config"]["kind"] == "probe":
        probe(spec, Path(argv[1]))
        return 0
    run_worker(spec, Path(argv[1]))
    sys.stdout.flush()
    if spec["config"]["kind"] == "trainer":
        from vit_train.distributed.shutdown import clean_exit

        clean_exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
