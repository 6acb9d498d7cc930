# Run 30: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run30.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log | cut -c1-200
nvidia-smi topo -m 2>&1 | head -5
python3 .gpu/startup_probe.py missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-200
C=fp32_reference,torch_eager,ddp,ddp_x2,zero2_x2,hybrid_tp2,hybrid_pp2,hybrid
python3 -m vit_train.bench --configs $C --recheck-startup '' --time-budget 400 --timeout 180 --out $OUT/bench2gpu > $OUT/bench2gpu.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench2gpu.log | cut -c1-200
grep -B2 -A12 "failed\|Traceback" $OUT/bench2gpu.log | tail -40
