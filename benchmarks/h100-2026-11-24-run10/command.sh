# Run 10: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run9.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -1 $OUT/setup.log
C=fp32_reference,torch_eager,torch_compile,torch_compile_bf16,ddp,ddp+compile,hybrid,hybrid+compile,zero2+compile
python3 -m vit_train.bench --batch-size 512 --configs $C --profile hybrid+compile --recheck-startup ddp,hybrid,ddp,hybrid --time-budget 420 --timeout 150 --out $OUT/bench512 > $OUT/bench512.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench512.log | cut -c1-200
tail -22 $OUT/bench512.log | cut -c1-330
