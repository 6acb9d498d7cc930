# The exploration before run 3 (explore.txt): the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/call1.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
source .gpu/setup.sh > /tmp/setup.log 2>&1 || { cat /tmp/setup.log; exit 1; }
tail -4 /tmp/setup.log
el imports; bash .gpu/imports.sh 2>&1 | head -40
el init; python3 .gpu/explore2.py init
(python3 .gpu/build_kernels.py fused_optim_cuda $OUT/kernels > $OUT/k1.log 2>&1; python3 .gpu/build_kernels.py cpu_adam_x86 $OUT/kernels > $OUT/k2.log 2>&1) &
for v in bf16m:default bf16m:default:fast autocast:default:fast; do
  el $v; timeout 150 python3 .gpu/explore2.py variant $v > $OUT/v-$v.log 2>&1; grep '^{' $OUT/v-$v.log || tail -5 $OUT/v-$v.log
done
wait
el hostprof zero2; timeout 100 python3 .gpu/explore2.py hostprof zero2 > $OUT/hp-zero2.log 2>&1; head -c 9000 $OUT/hp-zero2.log | grep -v Warning | head -80
REM=$(( 585 - ($(date +%s) - T0) ))
el "max-autotune with ${REM}s"; timeout $REM python3 .gpu/explore2.py variant bf16m:max-autotune-no-cudagraphs:fast > $OUT/v-mat.log 2>&1; grep '^{' $OUT/v-mat.log || tail -5 $OUT/v-mat.log
el done
