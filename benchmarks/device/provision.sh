# Set up a lent GPU machine for the benchmarks. Not project code: nothing here is installed with
# the product. Sourced from the repository root by benchmarks/device/run.sh (or by hand:
# `source benchmarks/device/provision.sh`); returns non-zero if the set-up failed.
#
# Needs the wheels the machine lacks in .whl/ (named in the device tool's `carry`): colossalai,
# transformers, tokenizers, huggingface_hub, peft, galore_torch, datasets, dill, multiprocess ...
# Optional: prebuilt ColossalAI kernels (*.so, e.g. saved by `run.sh kernels --save`) in
# $PREBUILT_KERNELS (default .kernels/, also carried) go where ColossalAI's KernelLoader imports
# prebuilt kernels before it JIT-builds them.

_vt_t0=$(date +%s)
ls .whl/*.whl > /dev/null 2>&1 || { echo "provision: no wheels in .whl/ (name .whl in carry)"; return 1; }

# 1. Wheels into /tmp/site (skipped when the same wheels are already there: a warm machine).
_vt_wheels=$(ls .whl/*.whl | sort | tr '\n' ' ')
if [ -f /tmp/site/.vt-provisioned ] && [ "$(cat /tmp/site/.vt-provisioned)" = "$_vt_wheels" ]; then
  echo "provision: wheels already installed in /tmp/site"
else
  rm -rf /tmp/site  # pip --target does not replace what is there
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || return 1
  echo "$_vt_wheels" > /tmp/site/.vt-provisioned
fi

# 2. A stand-in bitsandbytes in /tmp/stub, outside the product and outside /tmp/site:
# galore_torch (which colossalai.nn.optimizer imports) names bitsandbytes. Its real wheel (0.50.2, 43 MB)
# fits beside .whl/ only when little else travels (run 44 carried it in .bnb/ for the start-up A/B).
# It provides __version__ and optim.optimizer.Optimizer2State only; nothing here quantizes.
mkdir -p /tmp/stub/bitsandbytes/optim
printf '"""Stand-in for the benchmarks: nothing here quantizes."""\n__version__ = "0.0.0"\n' > /tmp/stub/bitsandbytes/__init__.py
: > /tmp/stub/bitsandbytes/optim/__init__.py
printf 'class Optimizer2State:\n    pass\n' > /tmp/stub/bitsandbytes/optim/optimizer.py

# 3. The environment every step runs in. NVLink multicast stays off (the device machines require it).
export PYTHONPATH=/tmp/site:/tmp/stub:$PWD
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext

# 4. Prebuilt ColossalAI kernels, where carried.
_vt_kernels=${PREBUILT_KERNELS:-.kernels}
if ls "$_vt_kernels"/*.so > /dev/null 2>&1; then
  mkdir -p /tmp/site/colossalai/_C && cp "$_vt_kernels"/*.so /tmp/site/colossalai/_C/ \
    && echo "provision: prebuilt kernels from $_vt_kernels: $(cd "$_vt_kernels" && ls *.so | tr '\n' ' ')"
fi

# 5. Bytecode. This host's Python writes none (every import would recompile every .py: 10+ s for
# transformers/peft/colossalai); an ordinary pip install precompiles, so do the same once.
python3 -c 'import sys, os; print("dont_write_bytecode", sys.dont_write_bytecode, os.environ.get("PYTHONDONTWRITEBYTECODE"))'
_vt_sp=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))') || return 1
_vt_c0=$(date +%s)
python3 -m compileall -q -j 0 /tmp/site /tmp/stub "$PWD/vit_train" "$PWD/hpc" > /dev/null 2>&1
for _vt_pkg in torch numpy sympy pandas pyarrow fsspec requests urllib3 httpx PIL safetensors tqdm regex yaml \
               filelock jinja2 triton networkx packaging psutil einops xxhash multiprocess; do
  [ -d "$_vt_sp/$_vt_pkg" ] && python3 -m compileall -q -j 0 "$_vt_sp/$_vt_pkg" > /dev/null 2>&1
done
# what a training process still imports without bytecode (small packages of the host's environment)
python3 benchmarks/device/startup_probe.py missing --compile 2>&1 | grep -E "^(modules|compiled)" | cut -c1-300
echo "provision: precompiled bytecode in $(( $(date +%s) - _vt_c0 ))s"

# 6. What the machine is.
python3 - <<'PY'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
def v(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
print({n: v(n) for n in ("colossalai", "transformers", "datasets", "safetensors", "triton", "peft", "pyarrow", "huggingface_hub")})
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
nvidia-smi topo -m 2>&1 | head -5
echo "provision: done in $(( $(date +%s) - _vt_t0 ))s"
unset _vt_t0 _vt_wheels _vt_kernels _vt_sp _vt_c0 _vt_pkg
