# Run 3: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run3.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -5 $OUT/setup.log
ls -la /tmp/site/colossalai/_C/*.so
python3 -m vit_train.bench --profile torch_compile_bf16,ddp+compile,ddp+compile_stock,zero2,zero2+compile,hybrid+compile \
  --time-budget 470 --timeout 150 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench exit $?"
grep '^\[bench\]' $OUT/bench.log | cut -c1-300 | tail -60
tail -45 $OUT/bench.log | cut -c1-400
