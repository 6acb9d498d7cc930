# Run 19: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run19.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log | cut -c1-200
python3 .gpu/startup_probe.py missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-200
C=fp32_reference,torch_eager,torch_compile,torch_compile_bf16,ddp,ddp+compile,zero1,zero2,zero2+compile,hybrid,hybrid+fused_kernels,hybrid_zero1,hybrid_as_shipped,hybrid+compile,hybrid+compile_full_last,gemini,gemini_as_shipped,gemini_stock_forwards,gemini_offload
python3 -m vit_train.bench --configs $C --profile hybrid+compile,gemini --recheck-startup ddp,hybrid,ddp,hybrid --time-budget 430 --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench.log | cut -c1-200
