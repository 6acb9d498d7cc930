"""``python -m vit_train.bench``: training speed of every plugin/layout next to plain PyTorch, one run.

Each configuration runs in its own process (:mod:`vit_train.bench.worker`), started from this one,
so its process-start-to-first-step time is what a job would pay: interpreter, imports, process
group, model, boost, compilation, first step. The baselines (plain PyTorch eager and plain
PyTorch + torch.compile, both bf16 autocast, fused AdamW, SDPA; and compile with bf16 weights and
fp32 master weights, the ceiling for the plugins that keep bf16 weights) and an fp32 loss
reference run in the same invocation on the same synthetic cache, the same initial weights and
the same batches. Compiled plugin configurations set ``model.compile``, as a user's grid would.

Reported per configuration: steady-state images/s and step time over ``--steps`` steps after
``--warmup`` steps, peak GPU memory, MFU against the bf16 dense spec (989 TFLOP/s, H100 SXM) and
against the matrix-product rate measured in the same run, start-to-first-step seconds with a
breakdown, the largest loss difference from the fp32 reference over the warm-up steps, and a host
probe (a fixed pure-Python workload timed before and after the timed steps: the host's speed during
the row, which host-bound rows follow). Writes ``bench.json`` and ``bench.md`` under ``--out`` (after every configuration, so a run cut
short keeps what it measured) and prints the table last.

On CPU (``--model tiny --steps 3``) it is the CI smoke test: Gemini and the compiled
configurations are listed as skipped with the reason, everything else runs. Every row at small
batches: ``--batch-size 8`` then ``32`` (per GPU; ``--num-train`` defaults to 4 batches). The
``*graph`` rows' numerics (losses against eager, resume): ``python -m vit_train.bench.graph_check``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from vit_train.bench.configs import CONFIG_NAMES, CONFIGS, BenchConfig, skip_reason
from vit_train.config import apply_dotted
from vit_train.model_shapes import PRESETS

SPEC_PEAK_TFLOPS = 989.0
"""H100 SXM bf16 dense tensor-core peak from the data sheet."""
LR = 2e-4
MAX_GRAD_NORM = 1.0
SEED = 42


def train_flops_per_image(model: str) -> float:
    """3 x the forward FLOPs (2 per multiply-add) of a ViT preset: patch embedding, per layer the
    Q/K/V/output projections, the MLP and the attention products, and the head."""
    p = PRESETS[model]
    d, f, layers = p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"]
    patches = (p["image_size"] // p["patch_size"]) ** 2
    tokens = patches + 1
    embed = 2 * patches * p["patch_size"] ** 2 * p["num_channels"] * d
    per_layer = tokens * (2 * 4 * d * d + 2 * 2 * d * f) + 2 * 2 * tokens * tokens * d
    return 3.0 * (embed + layers * per_layer)


# ---------------------------------------------------------------------------------------- running
def _spawn(c: BenchConfig, spec: dict[str, Any], result: Path, timeout: float) -> dict[str, Any]:
    if c.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={c.nproc}",
               "-m", "vit_train.bench.worker", json.dumps(spec), str(result)]
    else:
        cmd = [sys.executable, "-m", "vit_train.bench.worker", json.dumps(spec), str(result)]
    env = {**os.environ, **c.env, "PYTHONUNBUFFERED": "1", "BENCH_T0": repr(time.time())}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return {"status": "failed", "error": f"timed out after {timeout:.0f}s", "log_tail": output[-3000:]}
    if proc.returncode != 0 or not result.is_file():
        return {"status": "failed", "error": f"exit code {proc.returncode}", "log_tail": output[-3000:]}
    return {"status": "ok", **json.loads(result.read_text())}


def _spec(c: BenchConfig, a: argparse.Namespace, data_dir: Path, run_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    dp = c.nproc // c.model_parallel
    global_batch = a.batch_size * dp
    total_steps = a.warmup + 2 * a.steps + 3  # every configuration, the same cosine schedule
    base = {
        "model": {"name": a.model},
        "data": {"dataset": str(data_dir), "num_workers": 0},
        "optim": {"batch_size": global_batch, "epochs": 10**6, "max_steps": total_steps, "lr": LR,
                  "max_grad_norm": MAX_GRAD_NORM},
        "precision": "bf16",
        "seed": SEED,
        "output_dir": str(run_dir),
        "logging": {"tensorboard": False, "log_every_n_steps": 10**9},
        "checkpoint": {"export_hf": False},
    }
    return {
        # The trainer compiles exactly as a user's run does: through model.compile in its config.
        "config": asdict(c), "run_config": apply_dotted(base, {**c.overrides, "model.compile": c.compile}),
        "model": a.model, "seed": SEED,
        "lr": LR, "max_grad_norm": MAX_GRAD_NORM, "batch_size": global_batch, "global_batch": global_batch,
        "warmup": warmup, "steps": steps, "total_steps": total_steps, "data_dir": str(data_dir),
        "profile": c.name in a.profile,
    }


def _derive(r: dict[str, Any], flops: float, peak_measured: float | None, spec_peak: float) -> None:
    if r.get("status") != "ok" or "img_per_s" not in r:
        return
    achieved = r["img_per_s"] * flops / 1e12
    r["tflops"] = achieved
    r["mfu_spec"] = achieved / spec_peak
    if peak_measured:
        r["mfu_measured"] = achieved / peak_measured


def _loss_check(results: list[dict[str, Any]]) -> None:
    ref = next((r for r in results if r["name"] == "fp32_reference" and r.get("status") == "ok"), None)
    if ref is None:
        return
    for r in results:
        got = r.get("warmup_losses") or []
        diffs = [abs(a - b) for a, b in zip(got, ref["warmup_losses"]) if not math.isnan(a)]
        if diffs:
            # Step 1 starts from identical weights on the identical batch: only precision differs.
            # Later steps compound those differences through a fast-moving loss curve.
            r["first_loss_diff_vs_fp32"] = diffs[0]
            r["max_abs_loss_diff_vs_fp32"] = max(diffs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vit_train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_b16", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=256, help="images per GPU (per process on CPU)")
    p.add_argument("--steps", type=int, default=30, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (their losses are compared)")
    p.add_argument("--num-train", type=int, default=None, help="synthetic training images (default 4 batches)")
    p.add_argument("--configs", default="all", help=f"comma-separated subset of: {', '.join(CONFIG_NAMES)}")
    p.add_argument("--profile", default="", help="configurations to profile (top CUDA kernels) after timing")
    p.add_argument("--recheck-startup", default="ddp,hybrid", help="configurations started again at the end, "
                   "1 step each, for start-up on a warm cache ('' for none)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--time-budget", type=float, default=0, help="skip the configurations not yet started after this many seconds (0: none); the start-up rechecks still run")
    p.add_argument("--peak-tflops", type=float, default=SPEC_PEAK_TFLOPS, help="spec bf16 dense peak for MFU")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.md")
    a = p.parse_args(argv)
    wanted = CONFIG_NAMES if a.configs == "all" else [n.strip() for n in a.configs.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(CONFIG_NAMES)) + sorted(
        {n.strip() for n in (a.profile + "," + a.recheck_startup).split(",") if n.strip()} - set(CONFIG_NAMES))
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; valid: {', '.join(CONFIG_NAMES)}")
    if a.warmup < 1 or a.steps < 0:
        p.error("--warmup must be at least 1 (the first step is the start-up mark) and --steps at least 0")
    a.profile = {n.strip() for n in a.profile.split(",") if n.strip()}
    started = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vit_bench_"))
    data_dir = work / "data"
    flops = train_flops_per_image(a.model)
    report: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": "python -m vit_train.bench " + shlex.join(argv or sys.argv[1:]),
        "model": a.model, "image_size": PRESETS[a.model]["image_size"], "batch_size_per_gpu": a.batch_size,
        "steps": a.steps, "warmup": a.warmup, "precision": "bf16", "train_gflop_per_image": flops / 1e9,
        "spec_peak_tflops": a.peak_tflops}, "configs": [], "startup_recheck": []}

    probe_cfg = BenchConfig("probe", "probe", "device, matmul ceiling, synthetic cache, data benchmark")
    probe_spec = {"config": asdict(probe_cfg), "data_dir": str(data_dir), "num_train": a.num_train or 4 * a.batch_size,
                  "num_eval": 2 * a.batch_size, "image_size": PRESETS[a.model]["image_size"], "batch_size": a.batch_size}
    probe = _spawn(probe_cfg, probe_spec, work / "probe.json", a.timeout)
    if probe["status"] != "ok":
        print(f"probe failed: {probe['error']}\n{probe['log_tail']}", file=sys.stderr)
        return 1
    report["meta"].update({k: v for k, v in probe.items() if k not in ("status", "data_rates_img_per_s")})
    report["data"] = probe["data_rates_img_per_s"]
    on_cuda, num_gpus = probe["device"] != "cpu", probe["num_gpus"]
    peak_measured = probe.get("matmul_tflops_bf16")
    _write(a.out, report)

    def run(c: BenchConfig, steps: int, warmup: int, tag: str) -> dict[str, Any]:
        reason = skip_reason(c, on_cuda, num_gpus)
        if reason is None and tag == "main" and a.time_budget and time.time() - started > a.time_budget:
            reason = f"time budget of {a.time_budget:.0f}s spent"
        if reason is not None:
            return {"name": c.name, "description": c.description, "status": "skipped", "reason": reason}
        spec = _spec(c, a, data_dir, work / f"run-{c.name}-{tag}", steps, warmup)
        print(f"[bench] {c.name} ({tag}) ...", flush=True)
        r = {"name": c.name, "description": c.description, "compile": c.compile, "nproc": c.nproc,
             **_spawn(c, spec, work / f"{c.name}-{tag}.json", a.timeout)}
        _derive(r, flops, peak_measured, a.peak_tflops)
        print(f"[bench] {c.name}: {_summary(r)}", flush=True)
        return r

    for c in CONFIGS:
        if c.name in wanted:
            report["configs"].append(run(c, c.steps if c.steps is not None and c.steps < a.steps else a.steps,
                                         a.warmup, "main"))
            _loss_check(report["configs"])
            _write(a.out, report)
    for name in [n.strip() for n in a.recheck_startup.split(",") if n.strip()]:
        first = next((r for r in report["configs"] if r["name"] == name), None)
        if first is not None and first["status"] == "ok":
            c = next(c for c in CONFIGS if c.name == name)
            report["startup_recheck"].append(run(c, 0, 1, "startup"))
            _write(a.out, report)
    report["meta"]["bench_seconds"] = time.time() - started
    _write(a.out, report)
    print(render_markdown(report))
    return 0 if all(r["status"] != "failed" for r in report["configs"]) else 1


def _summary(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('error') or r.get('reason')}\n{r.get('log_tail', '')[-1500:]}"
    if "img_per_s" not in r:
        return f"start to first step {r['start_to_first_step_s']:.1f}s"
    return f"{r['img_per_s']:.0f} img/s, {r['step_ms']:.1f} ms/step, start to first step {r['start_to_first_step_s']:.1f}s"


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    (out / "bench.md").write_text(render_markdown(report))


def _f(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "—"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown; the main table comes last (it is what a terminal shows)."""
    m = report["meta"]
    peak = m.get("matmul_tflops_bf16")
    eager = next((r.get("img_per_s") for r in report["configs"] if r["name"] == "torch_eager"), None)
    lines = [
        f"ViT ({m['model']}, {m['image_size']} px), batch {m['batch_size_per_gpu']} per GPU, bf16, synthetic data, "
        f"{m['steps']} timed steps after {m['warmup']}; {m.get('device', '?')}, {m['train_gflop_per_image']:.1f} "
        f"GFLOP/image; MFU vs {m['spec_peak_tflops']:.0f} TFLOP/s spec and vs {_f(peak, '.0f')} TFLOP/s measured "
        "(8192^3 bf16 product, this run).",
    ]
    if report.get("data"):
        lines += ["", "Data path, images/s the cache hands the step (batch as above): " + ", ".join(
            f"{k} {_f(v, ',.2f' if k.endswith('seconds') else ',.0f')}" for k, v in report["data"].items())]
    for r in report["configs"]:
        if "img_per_s_with_stop_sync" in r:
            lines += ["", f"{r['name']} with the multi-rank stop check (collective + host sync every step): "
                      f"{r['img_per_s_with_stop_sync']:,.0f} img/s vs {r['img_per_s']:,.0f} without."]
    rechecks = [r for r in report.get("startup_recheck", []) if r["status"] == "ok"]
    if rechecks:
        lines += ["", "Start-up on a warm cache (each started again for 1 step), seconds from process start:", ""]
        for r in rechecks:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["startup_marks"].items() if k != "warmup")
            setup = ", ".join(f"{k} {v:.2f}" for k, v in r["setup_seconds"].items())
            lines.append(f"- {r['name']}: {r['start_to_first_step_s']:.1f} s to the first step = {phases}"
                         + (f" (Trainer.setup: {setup})" if setup else ""))
    lines += [
        "",
        "| config | what | img/s | ms/step | x eager | peak GiB | MFU spec | MFU measured | start to 1st step s "
        "| loss diff vs fp32: step 1 / max | host probe ms before / after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["configs"]:
        if r["status"] != "ok":
            why = r.get("reason") or r.get("error")
            lines.append(f"| {r['name']} | {r['description']} | {r['status']}: {why} | | | | | | | | |")
            continue
        x = r.get("img_per_s")
        ratio = x / eager if x and eager else None
        lines.append(
            f"| {r['name']} | {r['description']} | {_f(x, ',.0f')} | {_f(r.get('step_ms'), '.1f')} | {_f(ratio, '.2f')} "
            f"| {_f(r.get('peak_mem_gib'), '.1f')} | {_f(r.get('mfu_spec'), '.1%')} | {_f(r.get('mfu_measured'), '.1%')} "
            f"| {_f(r.get('start_to_first_step_s'), '.1f')} "
            f"| {_f(r.get('first_loss_diff_vs_fp32'), '.4f')} / {_f(r.get('max_abs_loss_diff_vs_fp32'), '.3f')} "
            f"| {' / '.join(_f(v, '.1f') for v in r.get('host_probe_ms', [])) or '—'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
