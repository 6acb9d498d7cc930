"""cProfile of one trainer start to the first step (exploration, not project code).
prof_start.py CONFIG OUTDIR [batch]"""
import argparse, cProfile, io, json, os, pstats, sys, time
from pathlib import Path
T0 = time.time(); os.environ["BENCH_T0"] = repr(T0)
name, out = sys.argv[1], Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 256
pr = cProfile.Profile(); pr.enable()
import torch
from vit_train import bench, bench_worker
from vit_train.bench_data import write_synthetic_splits
data = Path("/tmp/profdata")
if not (data / "meta.json").exists():
    pr.disable(); write_synthetic_splits(data, 1024, 256, 224); pr.enable()
a = argparse.Namespace(batch_size=batch, warmup=1, steps=0, model="vit_b16", profile=set())
c = next(c for c in bench.CONFIGS if c.name == name)
spec = bench._spec(c, a, data, Path(f"/tmp/profrun-{name}-{time.time()}"), 0, 1)
bench_worker.run_worker(spec, out / f"{name}.json")
pr.disable()
s = io.StringIO(); ps = pstats.Stats(pr, stream=s); ps.sort_stats("cumulative").print_stats(70)
s2 = io.StringIO(); pstats.Stats(pr, stream=s2).sort_stats("tottime").print_stats(40)
(out / f"{name}-cum.txt").write_text(s.getvalue()); (out / f"{name}-tot.txt").write_text(s2.getvalue())
pr.dump_stats(str(out / f"{name}.prof"))
r = json.loads((out / f"{name}.json").read_text())
print("dynamo", "torch._dynamo" in sys.modules, "sklearn", "sklearn" in sys.modules, "scipy", "scipy" in sys.modules)
print(name, "total", round(time.time() - T0, 2), r["startup_marks"], r["setup_seconds"])
os._exit(0)
