# Run 16: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run16.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
python3 .gpu/startup_probe.py missing --compile > /dev/null 2>&1
HP='from vit_train.bench_worker import host_probe_ms as h; print("host probe ms", round(h(), 1))'
python3 -c "$HP"
E=benchmarks/h100-2026-11-24/provisioning/explore2.py
timeout 100 python3 $E steptimes gemini 40 2>&1 | grep "per 10-step"; python3 -c "$HP"
timeout 300 python3 -m vit_train.bench --configs torch_eager,gemini,gemini_stock_forwards --recheck-startup '' --timeout 120 --out $OUT/bench-a > $OUT/bench-a.log 2>&1
echo "bench exit $?"; tail -4 $OUT/bench-a.log | cut -c1-400
timeout 100 python3 $E steptimes gemini 40 2>&1 | grep "per 10-step"; python3 -c "$HP"
python3 -m vit_train.synthetic /tmp/beans224 --num-train 1034 --num-validation 133 --image-size 224 > /dev/null 2>&1
A="--model.name vit_b16 --data.dataset /tmp/beans224 --data.cache_dir /tmp/vtcache --optim.epochs 5 --optim.batch_size 32 --precision bf16"
T=benchmarks/h100-2026-11-24/provisioning/timed_cli.py
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r1 -- $A > /dev/null
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r2 -- $A > /dev/null
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r3 -- $A --parallel.plugin hybrid_parallel > /dev/null
timeout 60 python3 $T $OUT/cli.jsonl /tmp/r4 -- $A --parallel.plugin low_level_zero --parallel.zero_stage 2 > /dev/null
timeout 70 python3 $T $OUT/cli.jsonl /tmp/r5 -- $A --parallel.plugin gemini --optim.optimizer hybrid_adam > /dev/null
python3 -c "
import json
for l in open('$OUT/cli.jsonl'):
    r = json.loads(l); print(r['args'][-4:], r['exit_code'], r['wall_s'], r['to_final_checkpoint_s'], [e[2] for e in r['eval']], r['stderr_tail'][-300:])
"
