# Run 41 (two H200s of one host): the whole device command of this call (run as: bash benchmarks/h200x2-2026-12-03-run41/command.sh)
# model.cuda_graph with two data-parallel ranks (eager under torch DDP, graphed with its own all-reduce)
# and tensor-parallel 2: the first 50 losses against eager, and the stop-and-resume equality.
S=$(date +%s); source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; nvidia-smi -L
python3 -c "import torch, transformers, colossalai; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__, 'colossalai', colossalai.__version__)"
timeout $(( 580 - $(date +%s) + S )) python3 -m vit_train.bench.graph_check --steps 50 --timeout 100 --out $OUT/gc \
  --modes ddp_x2_fp32,hybrid_dp2_bf16,ddp_x2_bf16,hybrid_tp2_bf16 > $OUT/gc.log 2>&1
echo "graph_check exit $? at $(( $(date +%s) - S )) s"; cat $OUT/gc/graph_check.md
grep -m5 -E "Error|error:" $OUT/gc.log | cut -c1-300
