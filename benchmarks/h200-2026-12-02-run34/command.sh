# Run 34 (one H200): the device command (also in run.json)
bash benchmarks/device/run.sh --budget 400 script:gc vit_train/bench/graph_check.py --steps 20 --modes ddp_fp32,hybrid_bf16 --timeout 150 -- bench:b8 --batch-size 8 --steps 20 --warmup 5 --configs torch_eager,torch_graph,ddp,ddp+graph,hybrid,hybrid+graph --recheck-startup '' --timeout 120
