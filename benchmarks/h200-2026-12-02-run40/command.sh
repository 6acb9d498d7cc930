# Run 40 (one H200, after run 39): the seed spread of the grid points (seeds 43/44 against run 37-39's 42)
S=$(date +%s); left() { echo $(( 540 - $(date +%s) + S )); }
source benchmarks/device/provision.sh > $OUT/setup.log 2>&1 || { tail $OUT/setup.log; exit 1; }
echo "provisioned in $(( $(date +%s) - S )) s"; export VIT_TRAIN_KERNEL_CACHE=/tmp/vt-kernels
for spec in "c43 c 43 model.compile=false" "b43 b 43" "c44 c 44 model.compile=false" "cc42 c 42 model.compile=true"; do
  set -- $spec; L=$(left); [ $L -gt 70 ] || break
  extra="--seed $3"; [ -n "$4" ] && extra="$extra --c-options $4"
  timeout $(( L - 5 )) python3 -m vit_train.bench grid --variants $2 $extra --out $OUT/$1 --work .gw > $OUT/$1.log 2>&1
  echo "$1 exit $? at $(( $(date +%s) - S )) s"; grep -E "^\[grid bench\] (backbone|.:)" $OUT/$1.log | cut -c1-200
  grep -E "^\| (8|16|32) \|" $OUT/$1/grid_bench.md | tr '\n' ' '; echo
done
cd $OUT && tar czf all.tar.gz --remove-files c43 b43 c44 cc42 c43.log b43.log c44.log cc42.log 2>/dev/null; ls $OUT
