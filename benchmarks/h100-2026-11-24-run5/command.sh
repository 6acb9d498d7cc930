# Run 5: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run5.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
for round in 1 2; do
  for mode in keep trim; do
    if [ $mode = keep ]; then export VIT_TRAIN_KEEP_SKLEARN=1; else unset VIT_TRAIN_KEEP_SKLEARN; fi
    python3 -m vit_train.bench --configs ddp,hybrid --steps 0 --warmup 1 --recheck-startup ddp,hybrid --timeout 120 --out $OUT/ab-$mode-$round > $OUT/ab-$mode-$round.log 2>&1
    python3 - $OUT/ab-$mode-$round/bench.json $mode <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["configs"] + d["startup_recheck"]:
    if r.get("status") == "ok":
        m = r["startup_marks"]
        print(sys.argv[2], r["name"], round(r["start_to_first_step_s"], 2), "imports", round(m["import_torch"] + m["import_colossalai_transformers"], 2))
PY
  done
done
python3 -c "import sklearn, sys; print('sklearn', sklearn.__version__)"
