# Run 8: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/call8.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
for v in bf16m:default:fast bf16m:default:fast:sepqkv bf16m:default:fast:b512 bf16m:reduce-overhead:fast; do
  el $v; timeout 150 python3 .gpu/explore2.py variant $v > $OUT/v-${v//:/_}.log 2>&1; grep '^{' $OUT/v-${v//:/_}.log | cut -c1-900 || tail -5 $OUT/v-${v//:/_}.log
done
el hostprof; timeout 120 python3 .gpu/explore2.py hostprof hybrid+compile > $OUT/hp-hybrid.log 2>&1; grep -v Warning $OUT/hp-hybrid.log | head -c 7000
el done
