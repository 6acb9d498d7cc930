# Run 29: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run29.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -2 $OUT/setup.log | cut -c1-200
python3 .gpu/startup_probe.py missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-200
C=fp32_reference,torch_eager,torch_compile,ddp,ddp_as_shipped,ddp+compile,zero1,zero2,zero2+compile,hybrid,hybrid_zero1,hybrid+compile,gemini,gemini_offload
python3 -m vit_train.bench --batch-size 512 --configs $C --recheck-startup ddp,hybrid,ddp,hybrid --time-budget 370 --timeout 160 --out $OUT/bench512 > $OUT/bench512.log 2>&1
echo "bench512 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/bench512.log | cut -c1-200
python3 -m vit_train.synthetic /tmp/beans224 --num-train 1034 --num-validation 133 --image-size 224 > /dev/null 2>&1
A="--model.name vit_b16 --data.dataset /tmp/beans224 --data.cache_dir /tmp/vtcache --optim.epochs 5 --optim.batch_size 32 --precision bf16"
T=.gpu/timed_cli.py
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r1 -- $A > /dev/null
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r2 -- $A > /dev/null
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r3 -- $A --parallel.plugin hybrid_parallel > /dev/null
python3 -c "
import json
for l in open('$OUT/cli.jsonl'):
    r = json.loads(l); print(r['args'][-2:], r['exit_code'], r['wall_s'], r['to_final_checkpoint_s'], [e[2] for e in r['eval']], r['log'][-1:], r['stderr_tail'][-300:])
"
