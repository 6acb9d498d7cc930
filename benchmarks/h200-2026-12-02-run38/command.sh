# Run 38 (one H200, the call after run 37): grid variants b and h, then a at batch 8 (a at 16/32: run 39)
S=$(date +%s); left() { echo $(( 590 - $(date +%s) + S )); }
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s; .gw kept from run 37: $(ls .gw 2>/dev/null | tr '\n' ' ')"; export VIT_TRAIN_KERNEL_CACHE=/tmp/vt-kernels
timeout $(( $(left) - 5 )) python3 -m vit_train.bench grid --variants b,h --out $OUT/grid_bh --work .gw > $OUT/grid_bh.log 2>&1
echo "grid b,h exit $? at $(( $(date +%s) - S )) s"; grep -E "^\[grid" $OUT/grid_bh.log | cut -c1-300
L=$(left); [ $L -gt 60 ] && timeout $(( L - 5 )) python3 -m vit_train.bench grid --variants a --batch-sizes 8 --no-warmup \
  --out $OUT/grid_a8 --work .gw > $OUT/grid_a8.log 2>&1; echo "grid a8 exit $? at $(( $(date +%s) - S )) s"
grep -E "^\[grid" $OUT/grid_a8.log | cut -c1-300; tail -40 $OUT/grid_bh/grid_bench.md; tail -8 $OUT/grid_a8/grid_bench.md
(cd .gw/runs && find . \( -name "*.log" -size -2M -o -name "result.json" -o -name "run.json" -o -name "attempts.jsonl" \) -print0 | tar czf $OUT/gridlogs.tar.gz --null -T -)
cd $OUT && tar czf all.tar.gz --remove-files grid_bh grid_a8 grid_bh.log grid_a8.log 2>/dev/null; ls $OUT
