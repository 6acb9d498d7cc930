# Run 26: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run26.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log | cut -c1-200
python3 .gpu/startup_probe.py missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-200
C=fp32_reference,torch_eager,torch_compile,ddp,ddp+compile,zero1,zero2,zero2+compile,hybrid,hybrid_zero1,hybrid+compile,gemini,gemini_offload
python3 -m vit_train.bench --batch-size 512 --configs $C --profile hybrid+compile,gemini --time-budget 380 --timeout 160 --out $OUT/bench512 > $OUT/bench512.log 2>&1
echo "bench512 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench512.log | cut -c1-200
python3 -m vit_train.bench --configs torch_eager,hybrid+compile --out $OUT/bench256 > $OUT/bench256.log 2>&1
echo "bench256 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench256.log | cut -c1-200
