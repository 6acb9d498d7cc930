"""Build one ColossalAI HybridAdam kernel for this GPU only (sm_90) and install it where
KernelLoader imports prebuilt kernels first (colossalai/_C), so no training process JIT-compiles
or waits on a build lock. Copies the .so to OUTDIR to be carried to later machines.
Usage: python build_kernels.py fused_optim_cuda|cpu_adam_x86 OUTDIR"""
import os, shutil, subprocess, sys, time
from pathlib import Path

name, outdir = sys.argv[1], Path(sys.argv[2])
os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
os.environ.setdefault("MAX_JOBS", "8")
import colossalai
from colossalai.kernel.extensions.base_extension import _Extension
from colossalai.kernel.extensions.pybind.optimizer import fused_optimizer_cuda as fo
from colossalai.kernel.extensions.pybind.cpu_adam.cpu_adam_x86 import CpuAdamX86Extension

fo.get_cuda_cc_flag = lambda: []  # would add every arch torch ships (sm_75..sm_90): 4x the build
_Extension.get_jit_extension_folder_path = staticmethod(lambda: f"/tmp/colo_ext/{name}")  # own lock per build
ext = {"fused_optim_cuda": fo.FusedOptimizerCudaExtension, "cpu_adam_x86": CpuAdamX86Extension}[name]()
t = time.time()
mod = ext.build_jit()
so = Path(mod.__file__)
dest = Path(colossalai.__file__).parent / "_C" / f"{name}.so"
shutil.copy(so, dest)
subprocess.run(["strip", "--strip-debug", str(dest)], check=False)
outdir.mkdir(parents=True, exist_ok=True)
shutil.copy(dest, outdir / f"{name}.so")
print(f"{name}: built in {time.time() - t:.0f}s, {dest.stat().st_size / 2**20:.1f} MiB -> {dest}", flush=True)
