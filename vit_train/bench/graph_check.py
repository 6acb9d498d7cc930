"""``python -m vit_train.bench.graph_check --out DIR``: does ``model.cuda_graph`` train what eager trains?

Needs a CUDA GPU. For torch_ddp in fp32 and bf16 and hybrid_parallel in bf16 (and, when two GPUs are
present, hybrid_parallel tp=2 and two data-parallel ranks of each: eager under DDP, graphed without), on a preset (vit_b16) and the benchmark's synthetic data, every run
in its own process through the real Trainer (checkpoints, evaluation and export included):

1. eager against graph: the per-step losses of the first ``--steps`` steps (max abs difference;
   fp32 within 1e-5, bf16 within 2e-2 x max(1, |loss|)), gradient norms and final weights;
2. resume: the graphed run of 1 against a graphed run stopped after ``--steps // 2`` steps through the
   preemption path (``VIT_TRAIN_FAULT=stop@step=K``: collective checkpoint, exit) and resumed graphed
   (warm-up and capture again): max abs final-weight difference and equal ``batch_crc`` sequences;
   the same stop and resume eager is the reference (hybrid_parallel bf16 rebuilds its fp32 master
   weights from the saved bf16 ones on load, so its resume is not bit-exact with or without a graph).

Mode ``hybrid_bf16_sync1`` is ``hybrid_bf16`` whose graphed runs also average their gradients over the
one-GPU group (``VIT_TRAIN_BENCH_ONE_RANK_SYNC=1``, benchmark processes only): the captured NCCL
all-reduce and its flat-buffer copies on a machine with one GPU.

Writes ``graph_check.json`` and ``graph_check.md`` under ``--out``, prints the JSON, then the
markdown summary. Exit code 0 when every check passed. ``--no-graph`` runs every "graph" run eagerly:
a dry run of this script's plumbing on a CPU (it then compares eager with eager).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

MODES: dict[str, tuple[int, dict[str, Any]]] = {
    "ddp_fp32": (1, {"parallel.plugin": "torch_ddp", "precision": "fp32"}),
    "ddp_bf16": (1, {"parallel.plugin": "torch_ddp", "precision": "bf16"}),
    "hybrid_bf16": (1, {"parallel.plugin": "hybrid_parallel", "precision": "bf16"}),
    "hybrid_tp2_bf16": (2, {"parallel.plugin": "hybrid_parallel", "precision": "bf16", "parallel.tp_size": 2}),
    # Two data-parallel ranks: eager under torch DDP, graphed with its own all-reduce (distributed.grad_sync).
    "ddp_x2_fp32": (2, {"parallel.plugin": "torch_ddp", "precision": "fp32"}),
    "ddp_x2_bf16": (2, {"parallel.plugin": "torch_ddp", "precision": "bf16"}),
    "hybrid_dp2_bf16": (2, {"parallel.plugin": "hybrid_parallel", "precision": "bf16"}),
}
ONE_RANK_SYNC_ENV = "VIT_TRAIN_BENCH_ONE_RANK_SYNC"
"""Benchmark processes only: ``=1`` gives a one-rank run the gradient all-reduce of a data-parallel
one (:func:`force_one_rank_sync`), so one GPU shows that the captured NCCL all-reduce replays and what
its flat-buffer copies cost, where two GPUs are not at hand."""
MODE_ENV: dict[str, dict[str, str]] = {"hybrid_bf16_sync1": {ONE_RANK_SYNC_ENV: "1"}}
MODES["hybrid_bf16_sync1"] = (1, {"parallel.plugin": "hybrid_parallel", "precision": "bf16"})
LOSS_TOL = {"fp32": 1e-5, "bf16": 2e-2}
"""Per-step loss tolerance against eager (bf16: relative to max(1, |loss|))."""
WEIGHT_TOL = {"fp32": 1e-4, "bf16": 1e-2}
"""Final-weight tolerance of the resume check (Adam turns rounding noise into lr-sized steps)."""


def run_config(a: argparse.Namespace, data_dir: Path, out_dir: Path, overrides: dict[str, Any], graph: bool) -> dict[str, Any]:
    from vit_train.config import apply_dotted

    base = {
        "model": {"name": a.model},
        "data": {"dataset": str(data_dir), "num_workers": 0},
        "optim": {"batch_size": a.batch_size, "epochs": 10**6, "max_steps": a.steps, "lr": 2e-4, "warmup_ratio": 0.1,
                  "weight_decay": 0.05, "max_grad_norm": 1.0},
        "logging": {"tensorboard": False, "log_every_n_steps": 1, "eval_every_n_epochs": 10**6},
        "checkpoint": {"export_hf": True},
        "seed": 42,
        "output_dir": str(out_dir),
    }
    return apply_dotted(base, {**overrides, "model.cuda_graph": graph})


def force_one_rank_sync() -> bool:
    """Under ``VIT_TRAIN_BENCH_ONE_RANK_SYNC=1``: the graph step averages gradients over any group size,
    one rank included (an NCCL all-reduce over one GPU). Called by the benchmark workers only."""
    if os.environ.get(ONE_RANK_SYNC_ENV) != "1":
        return False
    from vit_train.distributed import grad_sync

    grad_sync.build = lambda named_params, group, dp_size: grad_sync.GradAllReduce(named_params, group)
    return True


def _spawn(nproc: int, cfg: dict[str, Any], timeout: float, fault: str | None = None,
           extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    module = ["-m", "vit_train.bench.graph_check", "--worker", json.dumps(cfg)]
    cmd = [sys.executable, *module] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module]
    env = {k: v for k, v in os.environ.items() if k != "VIT_TRAIN_FAULT"}
    env.update(extra_env or {})
    if fault:
        env["VIT_TRAIN_FAULT"] = fault
    try:
        proc = subprocess.run(cmd, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "log_tail": f"timed out after {timeout:.0f}s"}
    return {"returncode": proc.returncode, "log_tail": (proc.stdout + proc.stderr)[-3000:]}


def _worker(cfg_json: str) -> None:
    """One run: the CLI's path with the synthetic cache handed to Trainer.setup (as the benchmark does)."""
    from vit_train.bench.data import open_prepared
    from vit_train.cli import setup_logging
    from vit_train.config import RunConfig
    from vit_train.distributed.process_group import init_distributed
    from vit_train.distributed.shutdown import clean_exit
    from vit_train.trainer import Trainer

    setup_logging()
    force_one_rank_sync()
    cfg = RunConfig.from_dict(json.loads(cfg_json))
    env = init_distributed(cfg.seed)
    tr = Trainer(cfg, env)
    tr.setup(data=open_prepared(Path(cfg.data.dataset)))
    outcome = tr.train()
    clean_exit(0 if outcome.status == "completed" else 3)


# ---------------------------------------------------------------------------------------- comparing runs
def train_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def max_weight_diff(a: Path, b: Path) -> tuple[float, str]:
    """Largest |a - b| over the exported weights of two runs, and the tensor where it is."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(d / "final_model" / "model.safetensors")) for d in (a, b))
    if wa.keys() != wb.keys():
        return math.inf, f"different keys: {sorted(wa.keys() ^ wb.keys())[:4]}"
    worst = max(((float((wa[k].float() - wb[k].float()).abs().max()), k) for k in wa), default=(0.0, ""))
    return worst


def compare(a: Path, b: Path, tol: float, relative: bool) -> dict[str, Any]:
    """Per-step losses, gradient norms and batch fingerprints of two runs' metrics.jsonl."""
    ra, rb = train_records(a), train_records(b)
    steps_equal = [r["step"] for r in ra] == [r["step"] for r in rb]
    diffs = [abs(x["loss"] - y["loss"]) for x, y in zip(ra, rb)]
    limits = [tol * (max(1.0, abs(y["loss"])) if relative else 1.0) for y in rb]
    norm_diffs = [abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(ra, rb)
                  if math.isfinite(x["grad_norm"]) and math.isfinite(y["grad_norm"])]
    first_diff = next((x["step"] for x, y in zip(ra, rb) if x["loss"] != y["loss"]), None)
    return {
        "steps": len(ra),
        "steps_equal": steps_equal,
        "batch_crc_equal": [r["batch_crc"] for r in ra] == [r["batch_crc"] for r in rb],
        "max_abs_loss_diff": max(diffs, default=math.nan),
        "first_step_with_a_loss_diff": first_diff,
        "max_abs_grad_norm_diff": max(norm_diffs, default=math.nan),
        "losses_within_tolerance": steps_equal and bool(diffs) and all(d <= lim for d, lim in zip(diffs, limits)),
        "loss_tolerance": tol,
    }


def check_mode(name: str, a: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    nproc, over = MODES[name]
    precision = over["precision"]
    dirs = {k: work / f"{name}-{k}" for k in ("eager", "graph", "resumed", "eager_resumed")}
    graph = not a.no_graph
    extra = MODE_ENV.get(name)
    runs = {
        "eager": _spawn(nproc, run_config(a, data_dir, dirs["eager"], over, False), a.timeout),
        "graph": _spawn(nproc, run_config(a, data_dir, dirs["graph"], over, graph), a.timeout, extra_env=extra),
    }
    half = max(1, a.steps // 2)
    for key, graphed in (("resumed", graph), ("eager_resumed", False)):
        cfg = run_config(a, data_dir, dirs[key], over, graphed)
        env = extra if graphed else None
        runs[f"{key}_stop"] = _spawn(nproc, cfg, a.timeout, fault=f"stop@step={half}", extra_env=env)
        runs[key] = _spawn(nproc, cfg, a.timeout, extra_env=env)
    out: dict[str, Any] = {"mode": name, "nproc": nproc, "precision": precision,
                           "exit_codes": {k: r["returncode"] for k, r in runs.items()}}
    failed = [k for k in dirs if runs[k]["returncode"] != 0]
    unsaved = [k for k in ("resumed", "eager_resumed")
               if not (dirs[k] / "checkpoints" / f"step-{half:06d}" / "COMPLETE.json").is_file()]
    if failed or unsaved:
        out.update(ok=False, error=f"runs failed: {failed}" if failed else f"no checkpoint at step {half}: {unsaved}",
                   log_tails={k: runs[k]["log_tail"] for k in (failed or [f"{u}_stop" for u in unsaved])})
        return out
    eager_vs_graph = compare(dirs["graph"], dirs["eager"], LOSS_TOL[precision], relative=precision != "fp32")
    eager_vs_graph["max_abs_weight_diff"], eager_vs_graph["worst_weight"] = max_weight_diff(dirs["graph"], dirs["eager"])
    resume = compare(dirs["resumed"], dirs["graph"], LOSS_TOL[precision], relative=precision != "fp32")
    resume["stopped_after_step"] = half
    resume["restarts"] = json.loads((dirs["resumed"] / "result.json").read_text()).get("restarts")
    resume["max_abs_weight_diff"], resume["worst_weight"] = max_weight_diff(dirs["resumed"], dirs["graph"])
    resume["weight_tolerance"] = WEIGHT_TOL[precision]
    resume["eager_resume_max_abs_weight_diff"], _ = max_weight_diff(dirs["eager_resumed"], dirs["eager"])
    resume_ok = (resume["batch_crc_equal"] and resume["restarts"] == 1
                 and resume["max_abs_weight_diff"] <= WEIGHT_TOL[precision])
    out.update(eager_vs_graph=eager_vs_graph, resume=resume,
               ok=bool(eager_vs_graph["losses_within_tolerance"] and eager_vs_graph["batch_crc_equal"] and resume_ok))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [f"model.cuda_graph check: {m['model']}, batch {m['batch_size']}, {m['steps']} steps, {m['device']}"
             + (" (--no-graph: eager against eager, plumbing only)" if m["no_graph"] else ""), "",
             "| mode | ok | loss diff graph vs eager: max / first step | grad-norm diff | weight diff vs eager "
             "| resume: weight diff (eager's own) | resume: batch_crc equal |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in report["modes"]:
        if "eager_vs_graph" not in r:
            lines.append(f"| {r['mode']} | {r.get('ok', 'skipped')} | {r.get('error') or r.get('reason')} | | | | |")
            continue
        e, s = r["eager_vs_graph"], r["resume"]
        lines.append(f"| {r['mode']} | {r['ok']} | {e['max_abs_loss_diff']:.3g} / {e['first_step_with_a_loss_diff']} "
                     f"| {e['max_abs_grad_norm_diff']:.3g} | {e['max_abs_weight_diff']:.3g} | {s['max_abs_weight_diff']:.3g} "
                     f"({s['eager_resume_max_abs_weight_diff']:.3g}) | {s['batch_crc_equal']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vit_train.bench.graph_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/graph_check"))
    p.add_argument("--model", default="vit_b16")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=50, help="steps per run (the resumed run stops after half)")
    p.add_argument("--num-train", type=int, default=256, help="synthetic training images")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of: {', '.join(MODES)}")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--no-graph", action="store_true", help="run the graph runs eagerly (a plumbing check on CPU)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        _worker(a.worker)
        return 0
    import torch

    from vit_train.bench.data import write_synthetic_splits
    from vit_train.model_shapes import PRESETS

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or a.model not in PRESETS:
        p.error(f"unknown mode(s) {unknown} (valid: {', '.join(MODES)}) or model {a.model!r} (a preset: {', '.join(PRESETS)})")
    on_cuda = torch.cuda.is_available()
    if not on_cuda and not a.no_graph:
        p.error("model.cuda_graph needs a CUDA GPU; on a CPU only --no-graph (a plumbing check) runs")
    num_gpus = torch.cuda.device_count() if on_cuda else 0
    work = Path(tempfile.mkdtemp(prefix="graph_check_"))
    data_dir = write_synthetic_splits(work / "data", a.num_train, max(a.batch_size, 16), PRESETS[a.model]["image_size"])
    device = torch.cuda.get_device_name() if on_cuda else "cpu"
    report: dict[str, Any] = {"meta": {"model": a.model, "batch_size": a.batch_size, "steps": a.steps, "device": device,
                                       "num_gpus": num_gpus, "no_graph": a.no_graph, "work_dir": str(work)}, "modes": []}
    a.out.mkdir(parents=True, exist_ok=True)
    for name in modes:
        nproc = MODES[name][0]
        if nproc > max(num_gpus, 1 if not on_cuda else 0):
            report["modes"].append({"mode": name, "ok": "skipped", "reason": f"needs {nproc} GPUs, {num_gpus} present"})
        else:
            print(f"[graph_check] {name} ...", flush=True)
            report["modes"].append(check_mode(name, a, data_dir, work))
        (a.out / "graph_check.json").write_text(json.dumps(report, indent=1))
        (a.out / "graph_check.md").write_text(render_markdown(report))
    print(json.dumps(report, indent=1))
    print(render_markdown(report))
    return 0 if all(r["ok"] in (True, "skipped") for r in report["modes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
