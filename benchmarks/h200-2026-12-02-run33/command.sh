# Run 33 (one H200): the device command (also in run.json)
bash benchmarks/device/run.sh --budget 560 kernels --save -- script vit_train/bench/host_profile.py --plugin gemini --batch-size 8 32 --steps 20 -- bench --batch-size 32 --configs fp32_reference,torch_eager,gemini,gemini_offload --recheck-startup ''
