# Provisioning of the GPU host for the benchmark (not project code; sourced by each device call).
# Wheels from .whl, a bitsandbytes stand-in (galore_torch, which colossalai.nn.optimizer imports,
# names it; the real one cannot travel), and prebuilt ColossalAI kernels where KernelLoader looks first.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/stub/bitsandbytes/optim
printf '"""Stand-in: nothing here quantizes."""\n__version__ = "0.0.0"\n' > /tmp/stub/bitsandbytes/__init__.py
: > /tmp/stub/bitsandbytes/optim/__init__.py
printf 'class Optimizer2State:\n    pass\n' > /tmp/stub/bitsandbytes/optim/optimizer.py
export PYTHONPATH=/tmp/site:/tmp/stub:$PWD PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext
if ls .gpu/kernels/*.so >/dev/null 2>&1; then cp .gpu/kernels/*.so /tmp/site/colossalai/_C/; fi
# This host's Python writes no bytecode (every import recompiles every .py from source: 10+ s for
# transformers/peft/colossalai); a normal pip install precompiles. Do that once, as pip would.
python3 -c 'import sys, os; print("dont_write_bytecode", sys.dont_write_bytecode, os.environ.get("PYTHONDONTWRITEBYTECODE"))'
SP=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
echo "torch pycache files: $(ls $SP/torch/__pycache__ 2>/dev/null | wc -l)"
T0=$(date +%s)
python3 -m compileall -q -j 0 /tmp/site /tmp/stub $PWD/vit_train $PWD/hpc > /dev/null 2>&1
for pkg in torch numpy sympy pandas pyarrow fsspec requests urllib3 httpx PIL safetensors tqdm regex yaml filelock jinja2 triton networkx packaging psutil einops xxhash multiprocess; do
  [ -d $SP/$pkg ] && python3 -m compileall -q -j 0 $SP/$pkg > /dev/null 2>&1
done
echo "precompiled bytecode in $(( $(date +%s) - T0 ))s"
python3 - <<'PY'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print({n: md.version(n) for n in ("transformers", "colossalai", "datasets", "pyarrow", "fsspec", "huggingface_hub", "peft", "tokenizers")})
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
