# Run 43 (one H200): the whole device command of this call (run as: bash benchmarks/h200-2026-12-03-run43/command.sh;
# carry .whl and .cai_example, ColossalAI's examples/images/vit folder, never committed).
# 1. grid variant c with the bench's default options on today's code (pre-trained stand-in, deterministic);
# 2. ColossalAI's own ViT example started from the same pre-trained stand-in, batch 32 then batch 8, lr 1e-4.
S=$(date +%s); left() { echo $(( 582 - $(date +%s) + S )); }
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; export VIT_TRAIN_KERNEL_CACHE=/tmp/vt-kernels
timeout 200 python3 -m vit_train.bench grid --variants c --out $OUT/grid --work /tmp/gw > $OUT/grid.log 2>&1
echo "grid exit $? at $(( $(date +%s) - S )) s"; tail -14 $OUT/grid/grid_bench.md 2>/dev/null; grep -E "^\[grid" $OUT/grid.log | cut -c1-300
cp /tmp/gw/pretrain/pretrain.json $OUT/grid/ 2>/dev/null
for B in 32 8; do
  L=$(left); [ $L -gt 40 ] && timeout $(( L - 8 )) python3 benchmarks/device/colossalai_example.py --example .cai_example \
    --batch-size $B --lr 1e-4 --model-dir /tmp/gw/pretrain/model --out $OUT/example | tail -c 700
  echo "example batch $B done at $(( $(date +%s) - S )) s"
done
cd $OUT && tar czf all.tar.gz --remove-files grid example grid.log 2>/dev/null; ls $OUT
