# Run 22: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run22.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -1 $OUT/setup.log | cut -c1-200
python3 .gpu/fused_check.py > $OUT/fused_check.txt 2>&1; echo "check exit $?"; cut -c1-300 $OUT/fused_check.txt | tail -14
export FUSED_CFG=$(cat $OUT/best_config)
for v in bf16m:default:fast:fusedmlp bf16m:default:fast:gelu bf16m:default:fast:fusedmlp:b512 bf16m:default:fast:gelu:b512; do
  timeout 140 python3 .gpu/explore2.py variant $v > $OUT/variant-${v//:/_}.txt 2>&1; echo "$v exit $?"
  grep '^{' $OUT/variant-${v//:/_}.txt | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['top']=d['top'][:6]; print(json.dumps(d))" | cut -c1-700
done
