# Run 17: the command that device call ran (was benchmarks/h100-2026-11-24/provisioning/run17.sh until
# commit 8e3411b; .gpu/ was the device copy of that folder, see benchmarks/HISTORY.md).
set -u
source .gpu/setup.sh > $OUT/setup.log 2>&1 || { tail -20 $OUT/setup.log; exit 1; }
python3 .gpu/startup_probe.py missing --compile > /dev/null 2>&1
E=benchmarks/h100-2026-11-24/provisioning/explore2.py
timeout 200 python3 $E loops gemini 2>&1 | grep -E "ms/step|acc type"
timeout 150 python3 $E loops hybrid 2>&1 | grep -E "ms/step|acc type"
