# Run 9: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run8.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log
python3 -m vit_train.bench --profile hybrid+compile,ddp+compile --time-budget 450 --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-200
tail -30 $OUT/bench.log | grep -v "^| \(ddp_x2\|zero2_x2\|hybrid_tp2\|hybrid_pp2\)" | cut -c1-330
