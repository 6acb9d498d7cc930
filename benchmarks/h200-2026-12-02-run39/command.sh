# Run 39 (one H200, the call after run 38): grid variant a at batch 16 and 32 (batch 8: run 38)
S=$(date +%s); left() { echo $(( 590 - $(date +%s) + S )); }
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; export VIT_TRAIN_KERNEL_CACHE=/tmp/vt-kernels
timeout $(( $(left) - 5 )) python3 -m vit_train.bench grid --variants a --batch-sizes 16,32 --out $OUT/grid_a1632 --work .gw \
  > $OUT/grid_a1632.log 2>&1; echo "grid a16,32 exit $? at $(( $(date +%s) - S )) s"
grep -E "^\[grid" $OUT/grid_a1632.log | cut -c1-300; tail -14 $OUT/grid_a1632/grid_bench.md
(cd .gw/runs && find . \( -name "*.log" -size -2M -o -name "result.json" -o -name "run.json" -o -name "attempts.jsonl" \) -print0 | tar czf $OUT/gridlogs.tar.gz --null -T -)
cd $OUT && tar czf all.tar.gz --remove-files grid_a1632 grid_a1632.log 2>/dev/null; ls $OUT
