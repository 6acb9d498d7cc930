# Run 42 (two H200s of one host): the whole device command of this call (run as: bash benchmarks/h200x2-2026-12-03-run42/command.sh)
# model.cuda_graph with two data-parallel ranks (eager under torch DDP, graphed with its own all-reduce):
# first 50 losses against eager and the stop-and-resume equality; batch 8 and 32 per GPU beside the
# DDP rows of the same run; then bf16 DDP and tensor-parallel 2 with the time left.
S=$(date +%s); left() { echo $(( ${BUDGET:-582} - $(date +%s) + S )); }  # BUDGET: seconds this call may take
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; nvidia-smi -L
python3 -c "import torch, transformers, colossalai; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__, 'colossalai', colossalai.__version__)"
timeout $(( $(left) / 2 )) python3 -m vit_train.bench.graph_check --steps 50 --timeout 60 --out $OUT/gc \
  --modes ddp_x2_fp32,hybrid_dp2_bf16 > $OUT/gc.log 2>&1
echo "graph_check exit $? at $(( $(date +%s) - S )) s"; cat $OUT/gc/graph_check.md
grep -m5 -E "Error|error:" $OUT/gc.log | cut -c1-300
bash benchmarks/device/run.sh --no-provision --out $OUT/b --budget $(( $(left) - 90 )) \
  bench:b8 --batch-size 8 --configs torch_eager,ddp,ddp+graph,ddp_x2,ddp_x2+graph,hybrid_dp2,hybrid_dp2+graph --recheck-startup '' --timeout 60 -- \
  bench:b32 --batch-size 32 --configs torch_eager,ddp,ddp+graph,ddp_x2,ddp_x2+graph,hybrid_dp2,hybrid_dp2+graph --recheck-startup '' --timeout 60 2>&1 | grep -E "bench\]|exit" | cut -c1-200
echo "bench done at $(( $(date +%s) - S )) s"
L=$(left); [ $L -gt 60 ] && timeout $(( L - 10 )) python3 -m vit_train.bench.graph_check --steps 50 --timeout 60 --out $OUT/gc2 \
  --modes ddp_x2_bf16,hybrid_tp2_bf16 > $OUT/gc2.log 2>&1; echo "graph_check 2 exit $? at $(( $(date +%s) - S )) s"; cat $OUT/gc2/graph_check.md 2>/dev/null
cd $OUT && tar czf all.tar.gz --remove-files gc gc2 b gc.log gc2.log 2>/dev/null; ls $OUT
