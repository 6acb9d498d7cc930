# Run 4: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run4.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
python3 -m vit_train.bench --configs torch_eager,ddp,hybrid --steps 10 --recheck-startup ddp,hybrid --timeout 150 --out $OUT/startup > $OUT/startup.log 2>&1
echo "startup bench exit $?"; grep -E '^\[bench\]|^- ' $OUT/startup.log | cut -c1-420
# a second start-up sample of each, the same way (variance)
python3 -m vit_train.bench --configs ddp,hybrid --steps 0 --warmup 1 --recheck-startup '' --timeout 150 --out $OUT/startup2 > $OUT/startup2.log 2>&1
grep -E '^\[bench\]' $OUT/startup2.log | cut -c1-200
python3 -m vit_train.synthetic /tmp/beans224 --num-train 1034 --num-validation 133 --image-size 224 > /dev/null 2>&1
A="--model.name vit_b16 --data.dataset /tmp/beans224 --data.cache_dir /tmp/vtcache --optim.epochs 5 --optim.batch_size 32 --precision bf16"
python3 .gpu/timed_cli.py $OUT/cli.jsonl /tmp/r1 -- $A
python3 .gpu/timed_cli.py $OUT/cli.jsonl /tmp/r2 -- $A
python3 .gpu/timed_cli.py $OUT/cli.jsonl /tmp/r3 -- $A --parallel.plugin hybrid_parallel
python3 .gpu/timed_cli.py $OUT/cli.jsonl /tmp/r4 -- $A --parallel.plugin low_level_zero --parallel.zero_stage 2
python3 -c "
import json
for l in open('$OUT/cli.jsonl'):
    r = json.loads(l); print(r['args'][-4:], r['exit_code'], r['wall_s'], r['to_final_checkpoint_s'], (r.get('result') or {}).get('eval_accuracy'))
"
