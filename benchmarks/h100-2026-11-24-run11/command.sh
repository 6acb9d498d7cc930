# Run 11: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run10.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
python3 -m vit_train.bench --batch-size 512 --configs torch_eager,ddp+compile,hybrid+compile --recheck-startup '' --timeout 150 --out $OUT/rep512 > $OUT/rep512.log 2>&1
echo "512 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/rep512.log | cut -c1-200
python3 -m vit_train.bench --batch-size 256 --configs torch_eager,hybrid+compile --recheck-startup hybrid --timeout 150 --out $OUT/rep256 > $OUT/rep256.log 2>&1
echo "256 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/rep256.log | cut -c1-200
grep -A3 "^Start-up" $OUT/rep256.log | cut -c1-400
