"""``python -m vit_train.bench.repeat_check --out DIR``: is a run bitwise repeatable, with and without
``model.deterministic``?

Each mode trains the same configuration four times, every run in its own process through the real
Trainer (graph_check's worker, synthetic data, exported weights): twice with the default kernels and
twice with ``model.deterministic: true``. Reported per pair: the largest per-step loss difference, the
first step where the losses differ, the largest final-weight difference and whether the batch order
(``batch_crc``) is the same. The claim under test: with ``model.deterministic`` both are exactly 0,
so two runs of one configuration (one at a time or packed beside others on one GPU) agree bit for bit.

On a CPU (``--steps`` small) it checks the plumbing only: CPU kernels are repeatable either way.
Writes ``repeat_check.json`` and ``repeat_check.md`` under ``--out``; exit 0 when every deterministic
pair is bitwise equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from vit_train.bench.graph_check import _spawn, compare, max_weight_diff, run_config

MODES: dict[str, dict[str, Any]] = {
    "gemini_bf16": {"parallel.plugin": "gemini", "optim.optimizer": "hybrid_adam", "precision": "bf16"},
    "hybrid_bf16_graph": {"parallel.plugin": "hybrid_parallel", "precision": "bf16", "model.cuda_graph": True},
    "ddp_fp32": {"parallel.plugin": "torch_ddp", "precision": "fp32"},
}
CPU_MODES = {"ddp_fp32": {"parallel.plugin": "torch_ddp", "precision": "fp32"}}


def check_mode(name: str, over: dict[str, Any], a: argparse.Namespace, data_dir: Path, work: Path,
               on_cuda: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": name, "overrides": over, "work_dir": str(work)}
    for det in (False, True):
        key = "deterministic" if det else "default"
        dirs = [work / f"{name}-{key}-{i}" for i in (1, 2)]
        runs = []
        for d in dirs:
            over_run = {**over, "model.deterministic": det}
            cfg = run_config(a, data_dir, d, {k: v for k, v in over_run.items() if k != "model.cuda_graph"},
                             bool(over.get("model.cuda_graph")) and on_cuda)
            runs.append(_spawn(1, cfg, a.timeout))
        if any(r["returncode"] != 0 for r in runs):
            out[key] = {"ok": False, "exit_codes": [r["returncode"] for r in runs],
                        "log_tail": next(r["log_tail"] for r in runs if r["returncode"] != 0)}
            continue
        pair = compare(dirs[1], dirs[0], 0.0, relative=False)
        pair["max_abs_weight_diff"], pair["worst_weight"] = max_weight_diff(dirs[1], dirs[0])
        pair["bitwise_equal"] = (pair["steps_equal"] and pair["batch_crc_equal"] and pair["max_abs_loss_diff"] == 0.0
                                 and pair["max_abs_weight_diff"] == 0.0)
        pair["ok"] = True
        out[key] = pair
    det = out["deterministic"]
    out["ok"] = bool(det.get("ok") and det.get("bitwise_equal"))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [f"Repeat check: {m['model']}, batch {m['batch_size']}, {m['steps']} steps, {m['device']}", "",
             "| mode | kernels | loss diff: max / first step | weight diff | batch order equal | bitwise equal |",
             "|---|---|---:|---:|---|---|"]
    for r in report["modes"]:
        for key in ("default", "deterministic"):
            p = r[key]
            if not p.get("ok"):
                lines.append(f"| {r['mode']} | {key} | failed: exit {p.get('exit_codes')} | | | |")
                continue
            lines.append(f"| {r['mode']} | {key} | {p['max_abs_loss_diff']:.3g} / {p['first_step_with_a_loss_diff']} "
                         f"| {p['max_abs_weight_diff']:.3g} | {p['batch_crc_equal']} | {p['bitwise_equal']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vit_train.bench.repeat_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/repeat_check"))
    p.add_argument("--model", default="vit_b16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--num-train", type=int, default=256, help="synthetic training images")
    p.add_argument("--modes", default=None, help=f"comma-separated subset of: {', '.join(MODES)} (CPU: ddp_fp32)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per run")
    a = p.parse_args(argv)
    import torch

    from vit_train.bench.data import write_synthetic_splits
    from vit_train.model_shapes import PRESETS

    on_cuda = torch.cuda.is_available()
    table = MODES if on_cuda else CPU_MODES
    modes = [m.strip() for m in (a.modes or ",".join(table)).split(",") if m.strip()]
    unknown = sorted(set(modes) - set(table))
    if unknown or a.model not in PRESETS:
        p.error(f"unknown mode(s) {unknown} here (valid: {', '.join(table)}) or model {a.model!r}")
    work = Path(tempfile.mkdtemp(prefix="repeat_check_"))
    data_dir = write_synthetic_splits(work / "data", a.num_train, max(a.batch_size, 16), PRESETS[a.model]["image_size"])
    report: dict[str, Any] = {"meta": {"model": a.model, "batch_size": a.batch_size, "steps": a.steps,
                                       "device": torch.cuda.get_device_name() if on_cuda else "cpu",
                                       "torch": torch.__version__, "work_dir": str(work)}, "modes": []}
    a.out.mkdir(parents=True, exist_ok=True)
    for name in modes:
        print(f"[repeat_check] {name} ...", flush=True)
        report["modes"].append(check_mode(name, table[name], a, data_dir, work, on_cuda))
        (a.out / "repeat_check.json").write_text(json.dumps(report, indent=1))
        (a.out / "repeat_check.md").write_text(render_markdown(report))
    print(json.dumps(report, indent=1))
    print(render_markdown(report))
    return 0 if all(r["ok"] for r in report["modes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
