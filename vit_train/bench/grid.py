"""``python -m vit_train.bench grid``: the reference grid end to end, one run per GPU against several.

The reference sweep's shape (ViT-B/16 preset ``vit_b16``, batch {8,16,32} x lr {1e-4,2e-4,5e-4},
5 epochs, weight decay 0.5, warm-up 0.3, bf16) on the synthetic beans stand-in (1,034 training and
133 validation images of 224 px, as the real dataset), run through ``python submit.py submit GRID
--local`` (a subprocess: this package never imports :mod:`hpc`) on ONE GPU, per variant:

* ``a``: Gemini, one run at a time (``runs_per_gpu: 1``);
* ``b``: Gemini, the nine runs at once on the GPU (``runs_per_gpu: 9``);
* ``c``: the fastest options, packed: ``hybrid_parallel`` (tp 1, pp 1) with AdamW, ``model.compile`` and,
  when this checkout has it, ``model.cuda_graph`` (``--c-options`` changes them);
* ``h``: the baseline of ``b``: the same nine Gemini runs started by hand as nine concurrent
  ``python -m vit_train`` processes (the local profile's environment: OMP_NUM_THREADS=1).

Every run fine-tunes (``--init pretrained``, the default on CUDA) a ViT-B/16 that
:mod:`vit_train.bench.pretrain` pre-trains first on a related task, through ``from_pretrained`` with a
new head as from the hub, and runs with ``model.deterministic`` (``--no-deterministic`` turns it off), so
the same configuration gives the same result however it is scheduled. ``--init random`` trains the
preset from scratch (run 36's setting; its accuracies swing with the last bits of the arithmetic).

Reported per variant: wall time from the submit to the printed results table (for ``h``: from the
first start to the last exit), GPU-seconds (wall x GPUs used), and the accuracy table; and the
ratios, among them ``b / h`` (the goal: at most 1.1). Before the timed variants an untimed warm-up
run per plugin builds the pre-processed data cache and ColossalAI's JIT kernels (``--no-warmup``
skips it). Each variant starts from empty run folders. Writes ``grid_bench.json`` and
``grid_bench.md`` under ``--out`` after every variant.

On a machine without CUDA (the CI smoke test) Gemini becomes ``torch_ddp`` in fp32 with AdamW,
``c`` drops compile and CUDA graphs, and the runs are CPU processes (the substitutions are recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from vit_train.model_shapes import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "a": "Gemini, one run at a time (runs_per_gpu 1)",
    "b": "Gemini, packed (runs_per_gpu K)",
    "c": "fastest options, packed (runs_per_gpu K)",
    "h": "baseline of b: the same Gemini runs as concurrent `python -m vit_train` processes",
}
GEMINI = {"parallel.plugin": "gemini", "optim.optimizer": "hybrid_adam"}


def has_cuda_graph_option() -> bool:
    """``model.cuda_graph`` exists in this checkout's ModelConfig (added by another change)."""
    from vit_train.config import ModelConfig

    return any(f.name == "cuda_graph" for f in dataclasses.fields(ModelConfig))


def variant_overrides(name: str, on_cuda: bool, c_options: dict[str, Any]) -> dict[str, Any]:
    """Dotted RunConfig keys of a variant's runs (the base config is the reference's)."""
    if name in ("a", "b", "h"):
        return dict(GEMINI) if on_cuda else {"parallel.plugin": "torch_ddp", "optim.optimizer": "adamw", "precision": "fp32"}
    fast: dict[str, Any] = {"parallel.plugin": "hybrid_parallel", "optim.optimizer": "adamw"}
    if on_cuda:
        fast["model.compile"] = True
        if has_cuda_graph_option():
            fast["model.cuda_graph"] = True
    else:
        fast["precision"] = "fp32"
    return {**fast, **c_options}


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def base_config(a: argparse.Namespace, data_dir: Path, cache: Path, model: str) -> dict[str, Any]:
    return {"model.name": model, "model.deterministic": a.deterministic, "data.dataset": str(data_dir), "data.cache_dir": str(cache), "data.num_workers": 0,
            "optim.epochs": a.epochs, "optim.weight_decay": 0.5, "optim.warmup_ratio": 0.3, "precision": "bf16",
            "seed": a.seed, "checkpoint.export_hf": False}


def grid_doc(name: str, a: argparse.Namespace, base: dict[str, Any], over: dict[str, Any], runs_per_gpu: int,
             on_cuda: bool, out_root: Path) -> dict[str, Any]:
    slurm = {"nodes": 1, "cpus_per_task": os.cpu_count() or 1, "mem_gb": 64, "time_min": 600,
             "runs_per_gpu": runs_per_gpu}
    slurm.update({"gpus_per_node": 1} if on_cuda else {"gpus_per_node": 0, "tasks_per_node": 1})
    return {"name": name, "output_root": str(out_root), "profile": a.profile, "slurm": slurm,
            "base": _nested({**base, **over}),
            "grid": {"optim.batch_size": a.batch_sizes, "optim.lr": a.lrs}}


# ---------------------------------------------------------------------------- running
def _env(gpu: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_"))}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *paths]))
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    return env


def run_submit_local(grid: Path, submit_py: Path, gpu: str | None, log: Path, timeout: float) -> dict[str, Any]:
    """``submit GRID --local``; times the start to the results table's header line and to the exit."""
    t0 = time.perf_counter()
    to_table = None
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(submit_py), "submit", str(grid), "--local"], cwd=REPO_ROOT,
                                env=_env(gpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if to_table is None and "learning rate" in line and "batch size" in line:
                to_table = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                break
        code = proc.wait()
    wall = time.perf_counter() - t0
    text = log.read_text()
    table = text[text.rfind("batch size") - 200:] if "batch size" in text else ""
    return {"exit_code": code, "wall_s": wall, "wall_to_table_s": to_table, "printed_table": table[-3000:]}


def run_by_hand(configs: list[dict[str, Any]], work: Path, gpu: str | None, timeout: float) -> dict[str, Any]:
    """Variant h: every run as its own ``python -m vit_train --config`` process, all started at once."""
    env = {**_env(gpu), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # as the local profile exports
    procs = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        path = work / f"run{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(work / f"run{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "vit_train", "--config", str(path)], cwd=REPO_ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=max(timeout - (time.perf_counter() - t0), 1)))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
        log.close()
    return {"exit_code": max(codes, key=abs) if codes else 0, "wall_s": time.perf_counter() - t0,
            "wall_to_table_s": None, "exit_codes": codes}


def collect(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """batch size, lr, average loss and accuracy of each run, from its own files."""
    rows = []
    for d in run_dirs:
        cfg = _read(d / "config.json") or {}
        res = _read(d / "result.json") or {}
        optim = cfg.get("optim") or {}
        rows.append({"run": d.name, "batch_size": optim.get("batch_size"), "lr": optim.get("lr"),
                     "avg_train_loss": res.get("avg_train_loss"), "eval_accuracy": res.get("eval_accuracy"),
                     "status": res.get("status", "missing")})
    return sorted(rows, key=lambda r: (r["batch_size"] or 0, r["lr"] or 0))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _python_m(module: str, args: list[str], timeout: float, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} {shlex.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-4000:]}")


# ---------------------------------------------------------------------------- report
def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _init_line(m: dict[str, Any]) -> str:
    det = "model.deterministic on" if m.get("deterministic") else "default (non-deterministic) kernels"
    pre = m.get("pretrain")
    if not pre:
        return f"Initial weights: the preset's random ones (seed 42); {det}."
    p = pre["params"]
    return (f"Initial weights: pre-trained here (vit_train.bench.pretrain: {p['num_train']} synthetic images of another "
            f"seed, diseased vs healthy, {p['epochs']} epochs, accuracy {_f(pre.get('pretrain_eval_accuracy'), '.3f')} on "
            f"200 of its own; {pre['train_seconds'] + pre['data_seconds']:.0f} s, reused {pre['reused']}; weights sha256 "
            f"{pre['weights_sha256'][:16]}), then a new 3-class head; {det}.")


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [f"# Grid benchmark: {m['model']}, {len(m['batch_sizes']) * len(m['lrs'])} runs, {m['epochs']} epochs, "
             f"on {m['device']}", "",
             f"`{m['command']}` ({m['date']}); runs_per_gpu {m['runs_per_gpu']} for b and c; c: "
             f"`{json.dumps(m['c_overrides'])}`" + (f"; CPU substitutions: {m['substitutions']}" if m['substitutions'] else ""),
             "", _init_line(m), "", "| variant | what | wall s (to table) | GPU-s | x h | x b | runs finished |", "|---|---|---:|---:|---:|---:|---:|"]
    by = {v["name"]: v for v in report["variants"]}
    for v in report["variants"]:
        done = sum(r["status"] == "completed" for r in v["runs"])
        ratio = {k: (v["wall_s"] / by[k]["wall_s"] if k in by and by[k].get("wall_s") else None) for k in ("h", "b")}
        lines.append(f"| {v['name']} | {v['description']} | {_f(v.get('wall_s'), '.1f')} ({_f(v.get('wall_to_table_s'), '.1f')}) "
                     f"| {_f(v.get('gpu_seconds'), '.0f')} | {_f(ratio['h'], '.2f')} | {_f(ratio['b'], '.2f')} "
                     f"| {done}/{len(v['runs'])} |")
    for v in report["variants"]:
        best = max((r["eval_accuracy"] for r in v["runs"] if r["eval_accuracy"] is not None), default=None)
        lines += ["", f"## {v['name']}: {v['description']}", "", "| batch size | learning rate | average loss | accuracy |",
                  "|---:|---:|---:|---:|"]
        for r in v["runs"]:
            acc = _f(r["eval_accuracy"], ".4f")
            acc = f"**{acc}**" if best is not None and r["eval_accuracy"] == best else acc
            lines.append(f"| {r['batch_size']} | {_f(r['lr'], 'g')} | {_f(r['avg_train_loss'], '.4f')} | {acc} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "grid_bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "grid_bench.md").write_text(render_markdown(report))


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit_train.bench grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="b,h,c,a", help="comma-separated, run in this order, of: a, b, c, h "
                   "(default b,h,c,a: the b/h comparison first, the long sequential a last)")
    p.add_argument("--out", type=Path, default=Path("runs/grid_bench"), help="folder for the results and the submit logs")
    p.add_argument("--work", type=Path, default=None, help="folder for data, cache, grids and runs (default: --out); "
                   "keep it apart where --out must stay small (checkpoints of ViT-B/16 are ~1 GB a run)")
    p.add_argument("--model", default="vit_b16", choices=sorted(PRESETS))
    p.add_argument("--num-train", type=int, default=1034)
    p.add_argument("--num-validation", type=int, default=133)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--lrs", default="1e-4,2e-4,5e-4")
    p.add_argument("--seed", type=int, default=42, help="seed of every run (head init, data order): the seed spread")
    p.add_argument("--runs-per-gpu", type=int, default=9, help="K of variants b and c")
    p.add_argument("--c-options", default="", help="dotted key=value overrides of variant c, e.g. model.cuda_graph=false")
    p.add_argument("--gpu", default=None, help="the one GPU to use (default: the first visible)")
    p.add_argument("--profile", default="local", help="site profile named in the grid files (its env: is exported)")
    p.add_argument("--submit", type=Path, default=REPO_ROOT / "submit.py", help="this checkout's submit.py")
    p.add_argument("--init", choices=("auto", "pretrained", "random"), default="auto",
                   help="pretrained: fine-tune a ViT pre-trained here on a related task (vit_train.bench.pretrain, the "
                   "offline stand-in for the hub checkpoint); random: the preset's random weights; auto: pretrained on CUDA")
    p.add_argument("--pretrain-num-train", type=int, default=3000, help="images of the pre-training task")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="model.deterministic for every run (bitwise-repeatable kernels; default on)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs (data cache, kernels)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per variant")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        p.error(f"--variants {a.variants!r}: use a comma-separated subset of {', '.join(VARIANTS)}")
    a.batch_sizes = [int(x) for x in a.batch_sizes.split(",")]
    a.lrs = [float(x) for x in a.lrs.split(",")]
    c_options = {k.strip(): yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.c_options.split(",") if kv.strip())}
    import torch

    on_cuda = torch.cuda.is_available()
    gpu = (a.gpu or (os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0")) if on_cuda else None
    out = a.out.absolute()
    work_root = (a.work or a.out).absolute()
    data, cache, grids, runs = work_root / "data", work_root / "cache", work_root / "grids", work_root / "runs"
    for d in (out, grids, runs):
        d.mkdir(parents=True, exist_ok=True)
    nproc = str(min(16, os.cpu_count() or 1))
    _python_m("vit_train.synthetic", [str(data), "--num-train", str(a.num_train), "--num-validation",
                                      str(a.num_validation), "--image-size", str(a.image_size), "--num-proc", nproc], 3600, _env(gpu))
    init = a.init if a.init != "auto" else ("pretrained" if on_cuda else "random")
    pretrain = None
    if init == "pretrained":
        from vit_train.bench.pretrain import pretrained_folder

        params = {"preset": a.model, "num_train": a.pretrain_num_train, "image_size": a.image_size, "epochs": a.pretrain_epochs,
                  "batch_size": 32, "lr": 2e-4, "seed": 7, "data_seed": 1, "num_proc": int(nproc),
                  "extra": {"model.cuda_graph": True} if on_cuda and has_cuda_graph_option() else {"precision": "fp32"}}
        print("[grid bench] pre-training the stand-in backbone ...", flush=True)
        pretrain = pretrained_folder(work_root / "pretrain", params, _env(gpu), REPO_ROOT, a.timeout)
        print(f"[grid bench] backbone {pretrain['model_dir']} (sha256 {pretrain['weights_sha256'][:16]}, "
              f"reused {pretrain['reused']}, pre-training accuracy {pretrain['pretrain_eval_accuracy']})", flush=True)
    base = base_config(a, data, cache, pretrain["model_dir"] if pretrain else a.model)
    report: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": "python -m vit_train.bench grid " + shlex.join(argv or sys.argv[2:]),
        "device": torch.cuda.get_device_name(0) if on_cuda else "cpu", "gpu": gpu, "model": a.model,
        "num_train": a.num_train, "num_validation": a.num_validation, "image_size": a.image_size, "epochs": a.epochs,
        "batch_sizes": a.batch_sizes, "lrs": a.lrs, "runs_per_gpu": a.runs_per_gpu, "init": init, "pretrain": pretrain,
        "deterministic": a.deterministic,
        "c_overrides": variant_overrides("c", on_cuda, c_options), "cuda_graph_option": has_cuda_graph_option(),
        "substitutions": "" if on_cuda else "gemini -> torch_ddp fp32 adamw; c without compile/cuda_graph, fp32"},
        "warmup": [], "variants": []}
    if not a.no_warmup:  # untimed: the data cache and ColossalAI's JIT kernels, once per plugin used
        for v in sorted({"a" if x in "abh" else "c" for x in variants}):
            cfg = {**base, **variant_overrides(v, on_cuda, c_options), "optim.batch_size": a.batch_sizes[0],
                   "optim.max_steps": 3, "output_dir": str(work_root / "warmup" / v)}
            shutil.rmtree(work_root / "warmup" / v, ignore_errors=True)
            t0 = time.perf_counter()
            (work_root / "warmup").mkdir(exist_ok=True)
            (work_root / "warmup" / f"{v}.yaml").write_text(yaml.safe_dump(_nested(cfg)))
            _python_m("vit_train", ["--config", str(work_root / "warmup" / f"{v}.yaml")], a.timeout, _env(gpu))
            report["warmup"].append({"variant": v, "seconds": time.perf_counter() - t0})
    for v in variants:
        over = variant_overrides(v, on_cuda, c_options)
        name = f"bench_{v}"
        shutil.rmtree(runs / name, ignore_errors=True)  # every variant trains from scratch
        print(f"[grid bench] {v}: {VARIANTS[v]} ...", flush=True)
        if v == "h":
            work = runs / name
            work.mkdir(parents=True)
            configs = [_nested({**base, **over, "optim.batch_size": bs, "optim.lr": lr, "output_dir": str(work / f"bs{bs}-lr{lr:g}")})
                       for bs in a.batch_sizes for lr in a.lrs]
            timing = run_by_hand(configs, work, gpu, a.timeout)
            run_dirs = [Path(c["output_dir"]) for c in configs]
        else:
            grid = grids / f"{name}.yaml"
            k = 1 if v == "a" else a.runs_per_gpu
            grid.write_text(yaml.safe_dump(grid_doc(name, a, base, over, k, on_cuda, runs), sort_keys=False))
            timing = run_submit_local(grid, a.submit, gpu, out / f"{name}.log", a.timeout)
            run_dirs = sorted(d for d in (runs / name).iterdir() if (d / "run.json").is_file()) if (runs / name).is_dir() else []
        gpus = 1 if on_cuda else 0
        entry = {"name": v, "description": VARIANTS[v].replace("K", str(a.runs_per_gpu)), "overrides": over, "gpus": gpus,
                 **timing, "gpu_seconds": timing["wall_s"] * gpus, "runs": collect(run_dirs)}
        report["variants"].append(entry)
        print(f"[grid bench] {v}: {entry['wall_s']:.1f} s, exit {entry['exit_code']}, "
              f"{sum(r['status'] == 'completed' for r in entry['runs'])}/{len(entry['runs'])} runs completed", flush=True)
        _write(out, report)
    by = {v["name"]: v["wall_s"] for v in report["variants"]}
    report["ratios"] = {f"{x}_over_{y}": by[x] / by[y] for x in by for y in by if x != y and by[y]}
    _write(out, report)
    print(render_markdown(report))
    return 0 if all(v["exit_code"] == 0 for v in report["variants"]) else 1
