#!/usr/bin/env bash
# Same-machine A/B of bitsandbytes' deferred import-time compiles (vit_train/patches/lazy_compile.py):
# BASE (a checkout of the commit before) and NEW (this checkout) alternate in each round. Per variant
# and round: the imports of a training process (vit_train, the trainer, the ViT, ColossalAI's
# plugins) in one interpreter, then a whole tiny 2-rank torchrun fine-tune (4 steps, gloo, CPU).
# Usage: BASE=/path/to/checkout-at-52bbc68 bash command.sh   (run from this checkout's root)
# NPROC ranks (default 2: gloo on CPU; 1 on a one-GPU host, where the run trains on the GPU).
set -euo pipefail
TIMEFORMAT='%R %U'  # bash's time: wall and user CPU seconds
NEW=$(pwd); BASE=${BASE:?a checkout of the base commit}; ROUNDS=${ROUNDS:-8}; NPROC=${NPROC:-2}; W=$(mktemp -d)
python3 -c "from vit_train.synthetic import make_beans_like as m; m('$W/data', num_train=96, num_validation=30, num_test=12, image_size=32, seed=0)" >/dev/null 2>&1
for i in $(seq 1 "$ROUNDS"); do
  for tree in "$BASE" "$NEW"; do
    name=$([ "$tree" = "$BASE" ] && echo base || echo new)
    cat > "$W/cfg.yaml" <<YAML
model: {name: tiny}
seed: 42
output_dir: $W/out-$name-$i
data: {dataset: $W/data, cache_dir: $W/cache, num_workers: 0}
optim: {epochs: 1, max_steps: 4, batch_size: 8, max_grad_norm: 0.0}
parallel: {plugin: torch_ddp}
precision: fp32
logging: {log_every_n_steps: 1, eval_every_n_epochs: 1, tensorboard: false}
checkpoint: {every_n_steps: 2, export_hf: true}
YAML
    { time (cd "$tree" && { python3 -c "import vit_train, vit_train.trainer, transformers.models.vit.modeling_vit, colossalai.booster.plugin, sys; sys.exit('torch._inductor.compile_fx' in sys.modules and 7)" >/dev/null 2>&1 && echo 0 || echo $?; } > "$W/rc_imp"); } 2> "$W/t_imp"
    { time (cd "$tree" && python3 -m torch.distributed.run --nproc_per_node="$NPROC" -m vit_train --config "$W/cfg.yaml" > "$W/log-$name.txt" 2>&1); } 2> "$W/t_run"
    read -r iw iu < "$W/t_imp"; read -r rw ru < "$W/t_run"
    inductor=$([ "$(cat "$W/rc_imp")" = 7 ] && echo yes || echo no)
    echo "round $i $name imports_wall_s $iw imports_cpu_s $iu inductor_imported $inductor run_wall_s $rw run_cpu_s $ru"
  done
done
grep -h "vit_train.distributed.process_group" "$W"/log-*.txt  # the device the last runs trained on
rm -rf "$W"
