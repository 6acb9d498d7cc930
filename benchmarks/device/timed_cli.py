"""Run the real CLI once and time it from process start to the final checkpoint (not project code).

    python3 timed_cli.py SUMMARY.jsonl OUTPUT_DIR [--timeout S] -- CLI ARGS...

Starts ``python3 -m vit_train CLI ARGS --output_dir OUTPUT_DIR`` and appends one JSON line to
SUMMARY.jsonl: the exit code, the wall time of the process (``wall_s``), the time from its start to
the final checkpoint's COMPLETE.json (``to_final_checkpoint_s``; the HF export follows it), the
result, the first and last train losses, the median images/s, every evaluation (step, loss,
accuracy), the set-up log lines and, on failure, the end of stderr. The same record the runs of
BENCHMARKS.md's "Full fine-tune through the CLI" wrote (runs 4, 16, 29), plus ``timed_out``.
With --timeout the process group is killed after S seconds (exit_code null, timed_out true)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

head = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
if len(head) not in (2, 4) or "--" not in sys.argv:
    sys.exit(__doc__)
summary, out = Path(head[0]), Path(head[1])
timeout = float(head[3]) if len(head) == 4 and head[2] == "--timeout" else None
args = sys.argv[sys.argv.index("--") + 1:]
summary.parent.mkdir(parents=True, exist_ok=True)
t0 = time.time()
p = subprocess.Popen([sys.executable, "-m", "vit_train", *args, "--output_dir", str(out)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
try:
    stdout, stderr = p.communicate(timeout=timeout)
    code, timed_out = p.returncode, False
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    stdout, stderr = p.communicate()
    code, timed_out = None, True
wall = time.time() - t0
marks = sorted((out / "checkpoints").glob("step-*/COMPLETE.json"))
recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
train = [r for r in recs if r.get("kind") == "train"]
rec = {
    "args": args, "exit_code": code, "timed_out": timed_out, "wall_s": round(wall, 2),
    "to_final_checkpoint_s": round(marks[-1].stat().st_mtime - t0, 2) if marks else None,
    "final_checkpoint": str(marks[-1].parent.name) if marks else None,
    "result": json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None,
    "train_loss_first_last": [(r["step"], round(r["loss"], 4)) for r in (train[:2] + train[-2:])],
    "train_img_per_s_median": sorted(r.get("img_per_s", 0) for r in train)[len(train) // 2] if train else None,
    "eval": [(r["step"], round(r["loss"], 4), round(r["accuracy"], 4)) for r in recs if r.get("kind") == "eval"],
    "log": [l for l in stderr.splitlines() if "setup took" in l or "Error" in l or "error" in l][-6:],
    "stderr_tail": stderr[-1500:] if code else "",
}
with summary.open("a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps({k: rec[k] for k in ("exit_code", "wall_s", "to_final_checkpoint_s", "result", "eval", "log")}), flush=True)
