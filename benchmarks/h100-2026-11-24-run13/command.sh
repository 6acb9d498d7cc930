# Run 13: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run13.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log
python3 -m vit_train.bench --profile hybrid+compile --time-budget 455 --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-200
grep -A4 "^Start-up" $OUT/bench.log | cut -c1-420
