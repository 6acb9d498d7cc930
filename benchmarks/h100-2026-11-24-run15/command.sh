# Run 15: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run15.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log | cut -c1-200
P=.gpu/startup_probe.py
python3 $P missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-300
python3 - <<'PY'
import time; t0 = time.time()
import torch; t1 = time.time()
torch.cuda.init(); t2 = time.time()
x = torch.empty(1, device="cuda"); torch.cuda.synchronize(); t3 = time.time()
a = torch.randn(256, 256, device="cuda"); (a @ a).sum().item(); t4 = time.time()
print(f"cuda: import torch {t1-t0:.2f}, cuda.init {t2-t1:.2f}, first allocation (context) {t3-t2:.2f}, first product (cuBLAS) {t4-t3:.2f}")
PY
echo "== imports: default | USE_FLAX=AUTO | as shipped + USE_FLAX=AUTO (previous state)"
for i in 1 2 3; do
  python3 $P imports 2>&1 | grep as_shipped
  USE_FLAX=AUTO python3 $P imports 2>&1 | grep as_shipped | sed 's/^/flax-auto /'
  USE_FLAX=AUTO VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1 python3 $P imports 2>&1 | grep as_shipped | sed 's/^/flax-auto /'
done
python3 -X importtime $P imports 2> $OUT/importtime.txt > /dev/null
python3 $P importtime $OUT/importtime.txt > $OUT/importtime-top.txt 2>&1; head -16 $OUT/importtime-top.txt
echo "== gemini step times"
E=benchmarks/h100-2026-11-24/provisioning/explore2.py
timeout 100 python3 $E steptimes gemini 40 2>&1 | grep "per 10-step"
VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1 timeout 100 python3 $E steptimes gemini 40 2>&1 | grep "per 10-step" | sed 's/^/as_shipped /'
echo "== bench"
python3 -m vit_train.bench --configs torch_eager,hybrid,hybrid_as_shipped,gemini,gemini_as_shipped,gemini_stock_forwards \
  --profile gemini --recheck-startup ddp,hybrid,ddp,hybrid --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-200
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/bench/bench.json"))
for c in d["configs"]:
    if c.get("profile"):
        p = c["profile"]; print(c["name"], "profile wall", round(p["wall_ms_per_step"], 1), "gpu", round(p["gpu_ms_per_step"], 1))
for r in d["startup_recheck"]:
    m = r["startup_marks"]
    print("recheck", r["name"], round(r["start_to_first_step_s"], 2), "torch", m["import_torch"], "imports", m["import_colossalai_transformers"],
          "data", m["open_data"], "setup", m["setup"], "first", m["first_step"], {k: round(v, 2) for k, v in r["setup_seconds"].items() if v > 0.02})
PY
