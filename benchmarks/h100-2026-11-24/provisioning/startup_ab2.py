"""Start-up A/B on one machine (exploration, not project code): ddp and hybrid started for one step,
alternating the code before this session (.gpu/old = b233bd1) and now; optionally with NCCL_DEBUG."""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
from vit_train import bench
from vit_train.bench_data import write_synthetic_splits
from vit_train.bench_worker import host_probe_ms

ROOT = Path.cwd()
OLD = ROOT / ".gpu" / "old"
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
out = Path(os.environ.get("OUT", "/tmp")) / "ab2"
out.mkdir(parents=True, exist_ok=True)
data = write_synthetic_splits(Path("/tmp/sab2/data"), 1024, 512, 224)
a = argparse.Namespace(batch_size=int(os.environ.get("AB_BATCH", "256")), warmup=1, steps=0, model="vit_b16", profile=set())
base_pp = os.environ["PYTHONPATH"]
variants = {
    "old": (OLD, base_pp.replace(str(ROOT), str(OLD)), {}),
    "new": (ROOT, base_pp, {}),
    "new_no_import_trims": (ROOT, base_pp, {"VIT_TRAIN_IMPORT_TRIMS": "0"}),
}
order = [v for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else ["old", "new"]
res = {}
for rnd in range(rounds):
    for variant in order:
        cwd, pp, extra = variants[variant]
        for name in ("ddp", "hybrid"):
            c = next(c for c in bench.CONFIGS if c.name == name)
            spec = bench._spec(c, a, data, Path(f"/tmp/sab2/run-{variant}-{name}-{rnd}"), 0, 1)
            result = Path(f"/tmp/sab2/{variant}-{name}-{rnd}.json")
            env = {**os.environ, **extra, "PYTHONPATH": pp, "PYTHONUNBUFFERED": "1"}
            if rnd == 0 and variant == "new":
                env["NCCL_DEBUG"] = "INFO"
            env["BENCH_T0"] = repr(time.time())
            p = subprocess.run([sys.executable, "-m", "vit_train.bench_worker", json.dumps(spec), str(result)],
                               cwd=cwd, env=env, capture_output=True, text=True, timeout=200)
            (out / f"{variant}-{name}-{rnd}.log").write_text(p.stdout[-20000:] + p.stderr[-20000:])
            if p.returncode != 0 or not result.exists():
                print(variant, name, "FAILED", p.returncode, (p.stdout + p.stderr)[-1500:], flush=True)
                continue
            r = json.loads(result.read_text())
            m, ss = r["startup_marks"], r["setup_seconds"]
            res.setdefault(f"{variant} {name}", []).append(r["start_to_first_step_s"])
            print(f"{variant:20s} {name:6s} {r['start_to_first_step_s']:5.2f} s | torch {m['import_torch']:.2f} other imports "
                  f"{m['import_colossalai_transformers']:.2f} init_dist {m['init_distributed']:.2f} open_data {m['open_data']:.2f} "
                  f"setup {m['setup']:.2f} ({', '.join(f'{k} {v:.2f}' for k, v in ss.items())}) first step {m['first_step']:.2f}"
                  f" | host probe {host_probe_ms():.1f}", flush=True)
for k, v in res.items():
    print(f"{k:28s} n {len(v)} mean {sum(v) / len(v):.2f} min {min(v):.2f} max {max(v):.2f}")
json.dump(res, open(out / "summary.json", "w"), indent=1)
