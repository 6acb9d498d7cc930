# Run 12: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run11.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
for v in bf16m:default:fast bf16m:default:fast:gelu bf16m:default:fast:b512 bf16m:default:fast:gelu:b512; do
  el $v; timeout 150 python3 .gpu/explore2.py variant $v > $OUT/v-${v//:/_}.log 2>&1; grep '^{' $OUT/v-${v//:/_}.log | cut -c1-700 || tail -5 $OUT/v-${v//:/_}.log
done
el bench512; python3 -m vit_train.bench --batch-size 512 --configs torch_eager,hybrid+compile,ddp+compile --recheck-startup '' --profile hybrid+compile --timeout 150 --out $OUT/b512 > $OUT/b512.log 2>&1
echo "512 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/b512.log | cut -c1-200
el bench256; python3 -m vit_train.bench --batch-size 256 --configs torch_eager,hybrid+compile,ddp+compile --recheck-startup '' --timeout 150 --out $OUT/b256 > $OUT/b256.log 2>&1
echo "256 exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/b256.log | cut -c1-200
el done
