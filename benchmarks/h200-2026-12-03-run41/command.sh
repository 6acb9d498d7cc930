# Run 41 (one H200; two were asked for and not lent): the whole device command of this call
# (run as: bash benchmarks/h200-2026-12-03-run41/command.sh). After the change that lets model.cuda_graph
# average gradients itself over several data-parallel ranks: the one-GPU graph paths are unchanged
# (first 50 losses against eager, stop-and-resume) and as fast (batch 8 and 32, eager baselines in the same run);
# hybrid_bf16_sync1 / hybrid+graph_sync1: the dp>1 gradient all-reduce captured over a one-GPU NCCL group.
S=$(date +%s); source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; nvidia-smi -L
python3 -c "import torch, transformers, colossalai; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__, 'colossalai', colossalai.__version__)"
timeout 360 python3 -m vit_train.bench.graph_check --steps 50 --timeout 60 --out $OUT/gc \
  --modes ddp_fp32,hybrid_bf16,hybrid_bf16_sync1 > $OUT/gc.log 2>&1
echo "graph_check exit $? at $(( $(date +%s) - S )) s"; cat $OUT/gc/graph_check.md
grep -m5 -E "Error|error:" $OUT/gc.log | cut -c1-300
bash benchmarks/device/run.sh --no-provision --out $OUT/b --budget $(( 580 - $(date +%s) + S )) \
  bench:b8 --batch-size 8 --configs torch_eager,ddp+graph,hybrid+graph,hybrid+graph_sync1 --recheck-startup '' --timeout 60 -- \
  bench:b32 --batch-size 32 --configs torch_eager,ddp+graph,hybrid+graph,hybrid+graph_sync1 --recheck-startup '' --timeout 60 2>&1 | grep -E "bench\]|exit" | cut -c1-200
echo "done at $(( $(date +%s) - S )) s"; cd $OUT && tar czf all.tar.gz --remove-files gc b gc.log 2>/dev/null; ls $OUT
