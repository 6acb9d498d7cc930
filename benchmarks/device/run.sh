#!/usr/bin/env bash
# One device call: provision the machine (benchmarks/device/provision.sh), then run named steps
# (benchmarks/device/driver.py), everything under $OUT/<step-name>/ plus $OUT/run.json and
# $OUT/setup.log. Not project code. See benchmarks/README.md; the step types:
#   bash benchmarks/device/run.sh --help
# Example (one H200):
#   bash benchmarks/device/run.sh bench --configs torch_eager,hybrid --batch-size 8 \
#     -- cli --plugin gemini --batch-size 8 -- grid --concurrent
# Options before the first step: --dry-run (print the commands, run nothing; no provisioning),
# --no-provision (the machine is already set up in this shell), --out DIR (default $OUT),
# --budget S (start no step after S seconds from now; give each command at most the time left).
VT_T0=$(date +%s)
export VT_T0
cd "$(dirname "$0")/../.." || exit 2
here=benchmarks/device

mode=$(python3 "$here/driver.py" --validate "$@") || exit 2
provision=1
for a in "$@"; do
  case $a in --no-provision) provision=0 ;; --) break ;; esac
done
if [ "${mode%% *}" = run ]; then
  out=${mode#run }
  mkdir -p "$out" || exit 2
  if [ $provision = 1 ]; then
    # shellcheck source=provision.sh
    source "$here/provision.sh" > "$out/setup.log" 2>&1 || { tail -30 "$out/setup.log"; exit 1; }
    grep -E "^(python|provision|NVIDIA|[A-Z].*H[0-9]+)" "$out/setup.log" | cut -c1-200
  fi
fi
exec python3 "$here/driver.py" "$@"
