"""Where a host-bound training step spends its host time: per phase, per library component, per hook.

``python -m vit_train.bench.host_profile --plugin gemini --batch-size 8 --out DIR`` builds the
project's Trainer exactly as the benchmark does (synthetic data, ViT-B/16 preset, bf16), warms up,
then measures ``--steps`` steps twice:

1. phases: host wall time of forward, backward, optimizer step (+ zero_grad and scheduler) of each
   step, with no device synchronisation inside the step (the GPU is idle most of a host-bound step,
   so the host time of a phase is what it costs); one synchronisation after each step gives the
   step's wall time, and the GPU's own busy time (kernel time per step) from a torch.profiler pass;
2. cProfile of the same steps, its self time summed per component: the file a function lives in,
   mapped to a short name (Gemini's parameter-op hooks, its chunk manager, ColoParameter's
   ``__torch_function__``, torch's autograd engine, the ViT forward, ...) and the top functions.

The result (JSON + markdown) lists milliseconds per step for each phase and component; a component's
share of the step is its self time divided by the steps, so the shares add up to the profiled step
(profiling inflates Python-heavy code: compare shares, and read absolute figures from pass 1).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

COMPONENTS = (  # (substring of the file path, component name): first match wins
    ("colossalai/zero/gemini/gemini_hook", "gemini: parameter-op hook (pre_op/post_op)"),
    ("colossalai/zero/gemini/chunk", "gemini: chunk manager (access/release/state)"),
    ("colossalai/zero/gemini/gemini_ddp", "gemini: GeminiDDP (grad_handle, forward/backward wrappers)"),
    ("colossalai/zero/gemini/gemini_optimizer", "gemini: optimizer wrapper (norm, clip, fp16 update)"),
    ("colossalai/zero/gemini/memory_tracer", "gemini: memory tracer / placement"),
    ("colossalai/zero/gemini/placement", "gemini: placement policy"),
    ("colossalai/zero/gemini", "gemini: other"),
    ("colossalai/tensor/param_op_hook", "colossalai: param op hook dispatch"),
    ("colossalai/tensor/colo_parameter", "colossalai: ColoParameter.__torch_function__"),
    ("colossalai/tensor/colo_tensor", "colossalai: ColoTensor"),
    ("colossalai/nn/optimizer", "colossalai: HybridAdam"),
    ("colossalai/", "colossalai: other"),
    ("transformers/", "transformers (ViT forward)"),
    ("vit_train/", "vit_train"),
    ("torch/autograd/function", "torch: autograd.Function (Gemini's backward-hook functions)"),
    ("torch/autograd", "torch: autograd"),
    ("torch/_tensor.py", "torch: Tensor Python methods (__hash__, __torch_function__ ...)"),
    ("torch/utils/_pytree", "torch: pytree (hook argument flattening)"),
    ("torch/overrides", "torch: __torch_function__ dispatch"),
    ("enum.py", "python: enum hashing (chunk tensor states)"),
    ("torch/optim", "torch: optim / lr scheduler"),
    ("torch/nn/modules/module.py:2837", "torch: Module.named_modules"),
    ("torch/nn/modules", "torch: nn.Module calls"),
    ("torch/", "torch: other Python"),
    ("{built-in", "C calls (kernel launches, tensor ops)"),
    ("~", "C calls (kernel launches, tensor ops)"),
)


# Entry points whose cumulative time (their callees included) says what a hook costs as a whole.
ENTRY_POINTS = (
    ("gemini_hook.py", "pre_op"), ("gemini_hook.py", "post_op"), ("gemini_hook.py", "pre_forward"),
    ("gemini_hook.py", "post_forward"), ("gemini_hook.py", "pre_backward"), ("gemini_hook.py", "post_backward"),
    ("gemini_ddp.py", "grad_handle"), ("gemini_ddp.py", "forward"), ("gemini_ddp.py", "backward"),
    ("gemini_ddp.py", "_post_backward"), ("gemini_optimizer.py", "step"), ("gemini_optimizer.py", "zero_grad"),
    ("colo_parameter.py", "__torch_function__"), ("colo_tensor.py", "__torch_function__"),
    ("param_op_hook.py", "pre_op"), ("param_op_hook.py", "post_op"),
    ("autograd/function.py", "apply"), ("hybrid_adam.py", "step"), ("trainer.py", "train_step"),
)


def component_of(filename: str) -> str:
    for key, name in COMPONENTS:
        if key in filename:
            return name
    return "other"


def _build(plugin: str, batch_size: int, model: str, work: Path, steps: int, offload: float) -> Any:
    from vit_train.model_shapes import PRESETS
    from vit_train.bench.data import open_prepared, write_synthetic_splits
    from vit_train.config import RunConfig
    from vit_train.distributed.process_group import init_distributed
    from vit_train.trainer import Trainer

    data = write_synthetic_splits(work / "data", num_train=max(256, 4 * batch_size), num_eval=32,
                                  image_size=PRESETS[model]["image_size"])
    parallel: dict[str, Any] = {"plugin": plugin}
    if plugin == "gemini":
        parallel["offload_optim_frac"] = offload
    if plugin == "low_level_zero":
        parallel["zero_stage"] = 2
    cfg = RunConfig.from_dict({
        "model": {"name": model}, "data": {"dataset": str(data), "num_workers": 0},
        "optim": {"batch_size": batch_size, "epochs": 10**6, "max_steps": 10 * steps + 20, "lr": 1e-4,
                  "optimizer": "hybrid_adam" if plugin == "gemini" else "adamw"},
        "parallel": parallel, "precision": "bf16", "output_dir": str(work / "run"),
        "logging": {"tensorboard": False, "log_every_n_steps": 10**9}, "checkpoint": {"export_hf": False},
    })
    tr = Trainer(cfg, init_distributed(cfg.seed))
    tr.setup(data=open_prepared(data))
    return tr


def _phase_step(tr: Any, perm: Any, i: int, acc: dict[str, float]) -> None:
    """Trainer.train_step's non-pipeline path, split into timed phases (same calls, same order)."""
    import torch
    import torch.nn.functional as F

    from vit_train.step import gather_batch

    t = [time.perf_counter()]
    idx = tr.order.batch_indices(perm, i, tr.layout.dp_rank, tr.layout.dp_size)
    x, y = gather_batch(tr.train_x, tr.train_y, idx, tr.device)
    tr.model.train()
    t.append(time.perf_counter())
    with tr.autocast:
        logits = tr.model(pixel_values=x).logits
    loss = F.cross_entropy(logits.float(), y)
    t.append(time.perf_counter())
    tr.booster.backward(loss, tr.optimizer)
    t.append(time.perf_counter())
    tr._clip_and_norm()
    tr.optimizer.step()
    t.append(time.perf_counter())
    tr.optimizer.zero_grad()
    tr.scheduler.step()
    t.append(time.perf_counter())
    torch.cuda.synchronize() if tr.device.type == "cuda" else None
    t.append(time.perf_counter())
    for name, a, b in (("batch", 0, 1), ("forward+loss", 1, 2), ("backward", 2, 3), ("optimizer step", 3, 4),
                       ("zero_grad+scheduler", 4, 5), ("wait for GPU", 5, 6)):
        acc[name] += (t[b] - t[a]) * 1e3


def _gpu_busy_ms(tr: Any, perm: Any, first: int, spe: int, steps: int) -> float:
    """Kernel time per step by torch.profiler (the GPU's own busy time, not the wall between events)."""
    import torch
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            tr.train_step(perm, (first + i) % spe)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / steps


def profile(plugin: str, batch_size: int, steps: int, warmup: int, model: str, work: Path, offload: float) -> dict[str, Any]:
    import torch

    tr = _build(plugin, batch_size, model, work, steps, offload)
    perm = tr.order.epoch_permutation(0)
    spe = tr.order.steps_per_epoch
    for i in range(warmup):
        tr.train_step(perm, i % spe)
    on_cuda = tr.device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
    phases: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    for i in range(steps):
        _phase_step(tr, perm, (warmup + i) % spe, phases)  # synchronises after each step
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    gpu_ms = _gpu_busy_ms(tr, perm, warmup + steps, spe, steps) if on_cuda else None
    prof = cProfile.Profile()
    prof.enable()
    for i in range(steps):
        tr.train_step(perm, (warmup + 2 * steps + i) % spe)
    if on_cuda:
        torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof)
    per_component: dict[str, float] = defaultdict(float)
    per_function: list[tuple[float, int, str]] = []
    entries: dict[str, list[float]] = {}
    callers_of: dict[str, list[str]] = {}
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{filename.split('site-packages/')[-1]}:{line}({func})"
        per_component[component_of(f"{filename}:{line}")] += tottime * 1e3 / steps
        per_function.append((tottime * 1e3 / steps, ncalls // steps, name))
        for where, fn in ENTRY_POINTS:
            if func == fn and filename.endswith(where):
                key = f"{where}:{fn}"
                old = entries.get(key, [0.0, 0.0])
                entries[key] = [old[0] + cumtime * 1e3 / steps, old[1] + ncalls / steps]
        top = sorted(callers.items(), key=lambda kv: -kv[1][3])[:3]
        callers_of[name] = [f"{c[0].split('site-packages/')[-1]}:{c[1]}({c[2]})" for c, _ in top]
    per_function.sort(reverse=True)
    return {
        "plugin": plugin, "batch_size": batch_size, "model": model, "steps": steps, "offload_optim_frac": offload,
        "step_wall_ms": wall_ms, "step_gpu_busy_ms": gpu_ms,
        "phases_host_ms": {k: v / steps for k, v in phases.items()},
        "profiled_step_ms": sum(per_component.values()),
        "components_ms": dict(sorted(per_component.items(), key=lambda kv: -kv[1])),
        "entry_points_cumulative_ms": {k: {"ms_per_step": round(v[0], 3), "calls_per_step": round(v[1], 1)}
                                       for k, v in sorted(entries.items(), key=lambda kv: -kv[1][0])},
        "top_functions": [{"ms_per_step": round(ms, 3), "calls_per_step": n, "function": f, "callers": callers_of.get(f, [])}
                          for ms, n, f in per_function[:30]],
    }


def render_markdown(r: dict[str, Any]) -> str:
    lines = [f"### {r['plugin']} at batch {r['batch_size']} ({r['model']}, bf16, offload {r['offload_optim_frac']})", "",
             f"step {r['step_wall_ms']:.1f} ms wall, GPU busy {r['step_gpu_busy_ms'] or float('nan'):.1f} ms; "
             f"profiled step {r['profiled_step_ms']:.1f} ms", "", "| phase (host, no sync) | ms/step |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["phases_host_ms"].items()]
    lines += ["", "| component (cProfile self time) | ms/step |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["components_ms"].items() if v >= 0.05]
    lines += ["", "| entry point (cumulative, callees included) | ms/step | calls/step |", "|---|---:|---:|"]
    lines += [f"| `{k}` | {v['ms_per_step']:.1f} | {v['calls_per_step']:g} |" for k, v in r["entry_points_cumulative_ms"].items()]
    lines += ["", "| top functions | ms/step | calls/step |", "|---|---:|---:|"]
    lines += [f"| `{f['function']}` | {f['ms_per_step']:.2f} | {f['calls_per_step']} |" for f in r["top_functions"][:15]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vit_train.bench.host_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--plugin", default="gemini", choices=("gemini", "torch_ddp", "hybrid_parallel", "low_level_zero"))
    p.add_argument("--batch-size", type=int, nargs="+", default=[8, 32])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--model", default="vit_b16")
    p.add_argument("--offload-optim-frac", type=float, default=0.0)
    step_out = os.environ.get("STEP_OUT")  # benchmarks/device/run.sh script steps
    p.add_argument("--out", type=Path, required=step_out is None, default=step_out, help="JSON + markdown go here")
    p.add_argument("--work", type=Path, default=Path("/tmp/vit_train_host_profile"), help="synthetic data and run folders")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    for bs in a.batch_size:
        r = profile(a.plugin, bs, a.steps, a.warmup, a.model, a.work / f"{a.plugin}-{bs}", a.offload_optim_frac)
        results.append(r)
        print(render_markdown(r), flush=True)
    name = f"host_profile_{a.plugin}"
    (a.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (a.out / f"{name}.md").write_text("\n".join(render_markdown(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
