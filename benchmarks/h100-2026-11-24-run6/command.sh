# Run 6: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run6.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
C=torch_eager,hybrid,hybrid+compile,zero2,zero2+compile
for mode in shipped fixed shipped2 fixed2; do
  case $mode in shipped*) export VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1;; *) unset VIT_TRAIN_COLOSSALAI_AS_SHIPPED;; esac
  python3 -m vit_train.bench --configs $C --recheck-startup '' --timeout 150 --out $OUT/$mode > $OUT/$mode.log 2>&1
  echo "== $mode exit $?"; grep -E '^\[bench\] [^ ]+: ' $OUT/$mode.log | cut -c1-160
done
