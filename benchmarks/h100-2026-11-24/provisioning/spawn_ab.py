"""Gemini row: the bench worker started directly vs through bench._spawn (exploration, not project code)."""
import argparse, json, subprocess, sys, time
from pathlib import Path
from vit_train import bench
from vit_train.bench_data import write_synthetic_splits

data = write_synthetic_splits(Path("/tmp/sab/data"), 1024, 512, 224)
c = next(c for c in bench.CONFIGS if c.name == sys.argv[1])
a = argparse.Namespace(batch_size=256, warmup=10, steps=30, model="vit_b16", profile=set())
for rnd in range(2):
    for how in ("direct", "spawn"):
        spec = bench._spec(c, a, data, Path(f"/tmp/sab/run-{how}-{rnd}"), 30, 10)
        out = Path(f"/tmp/sab/{how}-{rnd}.json")
        if how == "direct":
            subprocess.run([sys.executable, "-m", "vit_train.bench_worker", json.dumps(spec), str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = json.loads(out.read_text())
        else:
            r = bench._spawn(c, spec, out, 150)
        print(c.name, how, round(r["img_per_s"]), "img/s", round(r["step_ms"], 1), "ms/step, host probe", r.get("host_probe_ms"), flush=True)
