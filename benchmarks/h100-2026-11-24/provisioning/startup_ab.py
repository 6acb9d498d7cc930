"""Start-up A/B on one machine (exploration, not project code): ddp and hybrid started for one step,
alternating the start-up trims on (default) and off (ColossalAI's import-time compiles + transformers'
Flax probing, as before this session's change)."""
import argparse, json, os, sys
from pathlib import Path
from vit_train import bench
from vit_train.bench_data import write_synthetic_splits
from vit_train.bench_worker import host_probe_ms

data = write_synthetic_splits(Path("/tmp/sab/data"), 1024, 512, 224)
a = argparse.Namespace(batch_size=256, warmup=1, steps=0, model="vit_b16", profile=set())
OFF = {"VIT_TRAIN_COLOSSALAI_AS_SHIPPED": "1", "USE_FLAX": "AUTO"}
res = {}
for rnd in range(3):
    for variant, env in (("trims_on", {}), ("trims_off", OFF)):
        for name in ("ddp", "hybrid"):
            c = next(c for c in bench.CONFIGS if c.name == name)
            c = bench.BenchConfig(**{**c.__dict__, "env": env})
            spec = bench._spec(c, a, data, Path(f"/tmp/sab/run-{variant}-{name}-{rnd}"), 0, 1)
            r = bench._spawn(c, spec, Path(f"/tmp/sab/{variant}-{name}-{rnd}.json"), 150)
            m = r["startup_marks"]
            res.setdefault(variant, []).append(r["start_to_first_step_s"])
            print(variant, name, round(r["start_to_first_step_s"], 2), "s; torch", m["import_torch"], "other imports",
                  m["import_colossalai_transformers"], "setup", m["setup"], "first step", m["first_step"],
                  "| host probe", round(host_probe_ms(), 1), flush=True)
for k, v in res.items():
    print(k, "mean", round(sum(v) / len(v), 2), "min", round(min(v), 2), "max", round(max(v), 2))
