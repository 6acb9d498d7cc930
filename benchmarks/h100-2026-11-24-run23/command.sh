# Run 23: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run23.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -1 $OUT/setup.log | cut -c1-200
python3 .gpu/fused_check.py > $OUT/fused_check.txt 2>&1; echo "check exit $?"; grep -E '"config"|best' $OUT/fused_check.txt | cut -c1-300
timeout 200 python3 .gpu/explore2.py kernels hybrid+compile > $OUT/kernels-hybrid+compile.txt 2>&1; echo "kernels exit $?"; head -45 $OUT/kernels-hybrid+compile.txt | cut -c1-160
