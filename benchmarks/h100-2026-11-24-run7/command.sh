# Run 7: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run7.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -3 $OUT/setup.log
python3 .gpu/sdpa.py > $OUT/sdpa.txt 2>&1; cat $OUT/sdpa.txt | cut -c1-300
C=fp32_reference,torch_eager,torch_compile,torch_compile_bf16,ddp,ddp+compile,hybrid,hybrid+compile,hybrid+compile_full_last
python3 -m vit_train.bench --configs $C --profile hybrid+compile --recheck-startup '' --timeout 150 --time-budget 430 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-200
tail -14 $OUT/bench.log | cut -c1-330
