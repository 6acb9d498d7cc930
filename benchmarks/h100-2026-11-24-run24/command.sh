# Run 24: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run24.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
tail -1 $OUT/setup.log | cut -c1-200
timeout 240 python3 .gpu/explore2.py kernels hybrid+compile > $OUT/kernels-hybrid_compile.txt 2>&1; echo "kernels exit $?"
sed -n "/== enclosing/,\$p" $OUT/kernels-hybrid_compile.txt | cut -c1-200 | head -150
