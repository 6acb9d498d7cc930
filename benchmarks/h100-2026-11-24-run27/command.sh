# Run 27: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run27.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
T0=$(date +%s)
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
python3 .gpu/startup_probe.py missing --compile > $OUT/missing.log 2>&1
python3 -m compileall -q -j 0 .gpu/old > /dev/null 2>&1
python3 -c "import sklearn, scipy; print('sklearn', sklearn.__version__, 'scipy', scipy.__version__)" 2>&1 | tail -1
echo "setup done at $(( $(date +%s) - T0 ))s"
for i in 1 2; do for m in seq thread; do timeout 60 python3 .gpu/overlap.py $m 2>&1 | grep "^overlap"; done; done
echo "overlap done at $(( $(date +%s) - T0 ))s"
for c in ddp hybrid; do timeout 90 python3 .gpu/prof_start.py $c $OUT/prof 256 2>&1 | tail -2; done
echo "prof done at $(( $(date +%s) - T0 ))s"
timeout 330 python3 .gpu/startup_ab2.py 3 old,new,new_no_import_trims 2>&1 | grep -v "^\s*$" | grep -v Warn
echo "all done at $(( $(date +%s) - T0 ))s"
grep -h "NCCL INFO.*Init COMPLETE\|ncclCommInitRank" $OUT/ab2/new-*-0.log | head -5
