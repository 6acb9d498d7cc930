# Run 37 (one H200): the whole device command of this call (run as: bash benchmarks/h200-2026-12-02-run37/command.sh)
S=$(date +%s); left() { echo $(( 585 - $(date +%s) + S )); }
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; export VIT_TRAIN_KERNEL_CACHE=/tmp/vt-kernels
# 1. is a run bitwise repeatable, with and without model.deterministic (Gemini; hybrid + CUDA graph)
timeout 220 python3 -m vit_train.bench.repeat_check --modes gemini_bf16,hybrid_bf16_graph --steps 40 --batch-size 16 \
  --timeout 100 --out $OUT/repeat > $OUT/repeat.log 2>&1; echo "repeat_check exit $? at $(( $(date +%s) - S )) s"
cat $OUT/repeat/repeat_check.md; grep -m3 -E "Error|error:" $OUT/repeat.log | cut -c1-300
# 2. batch 256 and 512: graph rows beside the fastest non-graph row, same run
bash benchmarks/device/run.sh --no-provision --out $OUT/big --budget $(( $(left) - 120 )) \
  bench:b256 --batch-size 256 --steps 20 --warmup 5 --configs torch_eager,hybrid+compile,hybrid+graph,hybrid+compile+graph \
  --recheck-startup '' --timeout 110 -- \
  bench:b512 --batch-size 512 --steps 20 --warmup 5 --configs hybrid+compile,hybrid+compile+graph \
  --recheck-startup '' --timeout 110 2>&1 | grep -E "bench\]|exit|img/s" | cut -c1-240
echo "big done at $(( $(date +%s) - S )) s"
# 3. the pre-trained stand-in backbone, then grid variant c (kept in .gw for the next call on a warm machine)
L=$(left); [ $L -gt 60 ] && timeout $(( L - 5 )) python3 -m vit_train.bench grid --variants c --c-options model.compile=false \
  --out $OUT/grid --work .gw > $OUT/grid.log 2>&1; echo "grid exit $? at $(( $(date +%s) - S )) s"
tail -22 $OUT/grid/grid_bench.md 2>/dev/null; grep -E "^\[grid" $OUT/grid.log | cut -c1-300
cp .gw/pretrain/pretrain.log $OUT/grid/ 2>/dev/null
cd $OUT && tar czf all.tar.gz --remove-files repeat big grid repeat.log grid.log 2>/dev/null; ls $OUT
