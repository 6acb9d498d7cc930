# Run 14: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run14.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -3 $OUT/setup.log
P=.gpu/startup_probe.py
echo "== bytecode"; python3 $P missing 2>&1 | grep -E "^(modules|by package)"
echo "== imports before precompiling (as_shipped=1 without the lazy-compile hook)"
for i in 1 2; do for m in 1 0; do VIT_TRAIN_COLOSSALAI_AS_SHIPPED=$m python3 $P imports 2>&1 | grep as_shipped; done; done
VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1 python3 -X importtime $P imports 2> $OUT/importtime-shipped.txt > /dev/null
python3 $P importtime $OUT/importtime-shipped.txt | head -40
echo "== precompile what lacks bytecode"; python3 $P missing --compile 2>&1 | grep -E "^(modules|by package|compiled)" | cut -c1-1500
python3 $P missing 2>&1 | grep -E "^(modules|by package)"
for i in 1 2 3; do for m in 1 0; do VIT_TRAIN_COLOSSALAI_AS_SHIPPED=$m python3 $P imports 2>&1 | grep as_shipped; done; done
python3 -X importtime $P imports 2> $OUT/importtime.txt > /dev/null
python3 $P importtime $OUT/importtime.txt | head -30
echo "== bench"
python3 -m vit_train.bench --configs torch_eager,ddp,hybrid,gemini,gemini_stock_forwards,gemini_full_last \
  --profile gemini,gemini_stock_forwards --recheck-startup ddp,hybrid,ddp,hybrid --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-220
grep -A6 "^Start-up" $OUT/bench.log | cut -c1-420
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/bench/bench.json"))
for c in d["configs"]:
    if c.get("profile"):
        p = c["profile"]; print(c["name"], "wall", round(p["wall_ms_per_step"], 1), "gpu", round(p["gpu_ms_per_step"], 1), p["gpu_ms_by_group"])
for r in d["startup_recheck"]:
    print("recheck", r["name"], round(r["start_to_first_step_s"], 2), r["startup_marks"], {k: round(v, 2) for k, v in r["setup_seconds"].items()})
PY
echo "== gemini host profile"
timeout 150 python3 benchmarks/h100-2026-11-24/provisioning/explore2.py hostprof gemini 2>&1 | grep -v -i warn | head -75 | cut -c1-200
