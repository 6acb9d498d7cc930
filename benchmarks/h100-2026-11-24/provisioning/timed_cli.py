"""Run the real CLI once and time it from process start to the final checkpoint (not project code).
Usage: python timed_cli.py SUMMARY.jsonl OUTPUT_DIR -- CLI ARGS..."""
import json, subprocess, sys, time
from pathlib import Path

summary, out = Path(sys.argv[1]), Path(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1:]
t0 = time.time()
p = subprocess.run([sys.executable, "-m", "vit_train", *args, "--output_dir", str(out)], capture_output=True, text=True)
wall = time.time() - t0
marks = sorted((out / "checkpoints").glob("step-*/COMPLETE.json"))
recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
train = [r for r in recs if r.get("kind") == "train"]
rec = {
    "args": args, "exit_code": p.returncode, "wall_s": round(wall, 2),
    "to_final_checkpoint_s": round(marks[-1].stat().st_mtime - t0, 2) if marks else None,
    "final_checkpoint": str(marks[-1].parent.name) if marks else None,
    "result": json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None,
    "train_loss_first_last": [(r["step"], round(r["loss"], 4)) for r in (train[:2] + train[-2:])],
    "train_img_per_s_median": sorted(r.get("img_per_s", 0) for r in train)[len(train) // 2] if train else None,
    "eval": [(r["step"], round(r["loss"], 4), round(r["accuracy"], 4)) for r in recs if r.get("kind") == "eval"],
    "log": [l for l in p.stderr.splitlines() if "setup took" in l or "Error" in l or "error" in l][-6:],
    "stderr_tail": p.stderr[-1500:] if p.returncode else "",
}
with summary.open("a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps({k: rec[k] for k in ("exit_code", "wall_s", "to_final_checkpoint_s", "result", "eval", "log")}), flush=True)
