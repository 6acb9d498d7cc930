"""Start-up of training processes (vit_train/startup.py, run by vit_train/__init__.py).

vit_train.patches.lazy_compile: ColossalAI's import-time ``torch.compile`` decorations, and those of
the bitsandbytes module ColossalAI imports, are compiled on first call instead, with the same
arguments and the same results; nothing else changes, and importing them sets up no inductor.

The module-level tests use a recording stand-in for ``torch.compile`` (so the count of compilations
and the arguments can be checked); the subprocess tests import the real ColossalAI 0.5.0 modules in a
fresh interpreter, once with the hook and once with ``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1``, and call
the real deferred function, which then really compiles (inductor on CPU, a few seconds).

``USE_FLAX`` defaults to 0 in processes that import vit_train: transformers then does not import jax
for its image utilities. jax/flax are not installed here, so the test installs stand-in ``flax`` and
``jax`` distributions (metadata and an empty module) in a temporary folder.

The import trims: transformers treats scikit-learn and scipy as absent, so importing its ViT does not
import them; ``VIT_TRAIN_IMPORT_TRIMS=0`` keeps transformers' own view. scikit-learn is not installed
here and scipy may not be, so stand-in distributions (metadata and the names transformers imports)
come first on the path; transformers' real availability check and real imports run against them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from vit_train.patches.lazy_compile import CompileOnFirstCall, _deferred_compile

ROOT = Path(__file__).resolve().parents[1]


class _RecordingCompile:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, fn: Any, **kwargs: Any) -> Any:
        self.calls.append((fn, kwargs))
        return lambda *a, **kw: ("compiled", fn(*a, **kw))


def test_decorator_compiles_once_on_first_call_with_the_same_arguments() -> None:
    rec = _RecordingCompile()

    @_deferred_compile(rec, mode="max-autotune-no-cudagraphs", dynamic=False, disable=False)
    def add(a: int, b: int = 1) -> int:
        """adds"""
        return a + b

    assert isinstance(add, CompileOnFirstCall) and rec.calls == []  # nothing compiled at decoration
    assert add.__name__ == "add" and add.__doc__ == "adds"
    assert add(2, b=3) == ("compiled", 5)
    assert add(4) == ("compiled", 5)
    assert len(rec.calls) == 1
    fn, kwargs = rec.calls[0]
    assert fn is add.fn and kwargs == {"mode": "max-autotune-no-cudagraphs", "dynamic": False, "disable": False}


def test_disabled_decoration_is_the_plain_function_and_methods_bind() -> None:
    rec = _RecordingCompile()

    def f(x: int) -> int:
        return x * 2

    assert _deferred_compile(rec, disable=True)(f) is f and rec.calls == []

    class C:
        k = 10

        @_deferred_compile(rec)
        def m(self, x: int) -> int:
            return self.k + x

    assert C().m(1) == ("compiled", 11) and len(rec.calls) == 1


_PROBE = r"""
import json, sys, torch
import vit_train  # installs the hook (unless switched off)
import colossalai.quantization.fp8 as fp8
import colossalai.shardformer.layer.attn as attn
import bitsandbytes.backends.default.ops as bnb_ops  # colossalai.quantization imported it already
from torch._dynamo.utils import counters
from vit_train.patches.lazy_compile import CompileOnFirstCall

inductor_at_import = "torch._inductor.compile_fx" in sys.modules  # before anything below compiles
# bitsandbytes wraps its compiled kernel in a fallback closure: the compiled function is a cell of it
bnb_cells = [c.cell_contents for c in bnb_ops._dequantize_blockwise_compute.__closure__ or ()]

fn = attn._rescale_out_lse
deferred = isinstance(fn, CompileOnFirstCall)
plain = fn.fn if deferred else fn._torchdynamo_orig_callable
g = torch.Generator().manual_seed(0)
args = [torch.randn(2, 4, 8, 16, generator=g), torch.randn(2, 4, 8, 16, generator=g),
        torch.randn(2, 4, 8, 1, generator=g), torch.randn(2, 4, 8, 1, generator=g)]
graphs_before = counters["stats"]["unique_graphs"]
out = fn(*[a.clone() for a in args])
ref = plain(*[a.clone() for a in args])
print(json.dumps({
    "deferred": deferred,
    "fp8_deferred": isinstance(fp8._linear_fp8, CompileOnFirstCall),
    "bnb_deferred": any(isinstance(c, CompileOnFirstCall) and c.compiled is None for c in bnb_cells),
    "inductor_at_import": inductor_at_import,
    "torch_compile_restored": torch.compile.__module__ == "torch" and torch.compile.__name__ == "compile",
    "compiled_after_call": (fn.compiled is not None) if deferred else None,
    "new_graphs": counters["stats"]["unique_graphs"] - graphs_before,
    "same_result": all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, ref)),
}))
"""


def _probe(env_extra: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_colossalai_modules_get_deferred_compiles_that_compile_on_first_call() -> None:
    r = _probe({"VIT_TRAIN_COLOSSALAI_AS_SHIPPED": "0"})
    assert r["deferred"] and r["fp8_deferred"] and r["bnb_deferred"] and r["torch_compile_restored"], r
    assert not r["inductor_at_import"], r  # nothing set up inductor while ColossalAI and bitsandbytes imported
    assert r["compiled_after_call"] and r["new_graphs"] >= 1, r  # the first call really compiled
    assert r["same_result"], r


def test_switch_leaves_colossalai_as_shipped() -> None:
    r = _probe({"VIT_TRAIN_COLOSSALAI_AS_SHIPPED": "1"})
    assert not r["deferred"] and not r["fp8_deferred"] and not r["bnb_deferred"] and r["torch_compile_restored"], r
    assert r["inductor_at_import"], r  # as shipped, the import-time compiles set inductor up
    assert r["new_graphs"] >= 1 and r["same_result"], r


_FLAX_PROBE = r"""
import json, sys
import vit_train
import transformers.image_transforms
print(json.dumps({"jax_imported": "jax" in sys.modules}))
"""


def _fake_site(root: Path, dists: dict[str, str], modules: dict[str, str]) -> Path:
    """Stand-in distributions (``dists``: distribution name -> package) with ``modules`` (dotted name
    -> source) in a folder meant for the front of the path."""
    for dist, package in dists.items():
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
        info = root / f"{dist.replace('-', '_')}-9.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 9.0.0\n")
    for name, source in modules.items():
        *parents, leaf = name.split(".")
        folder = root.joinpath(*parents)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{leaf}.py").write_text(source)
    return root


def _fake_flax_site(root: Path) -> Path:
    return _fake_site(root, {"flax": "flax", "jax": "jax"}, {"jax.numpy": ""})


def _flax_probe(site: Path, env_extra: dict[str, str]) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "USE_FLAX"}
    env.update(env_extra, PYTHONPATH=f"{ROOT}{os.pathsep}{site}")
    p = subprocess.run([sys.executable, "-c", _FLAX_PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])["jax_imported"]


def test_transformers_skips_jax_unless_the_user_asks_for_flax(tmp_path: Path) -> None:
    site = _fake_flax_site(tmp_path / "site")
    assert not _flax_probe(site, {})  # vit_train's default: USE_FLAX=0
    assert _flax_probe(site, {"USE_FLAX": "1"})  # the user's setting wins (and the stand-in is seen)


_TRIMS_PROBE = r"""
import json, sys
import vit_train
import transformers.models.vit.modeling_vit  # reaches transformers.generation and transformers.loss
from transformers.utils import is_scipy_available, is_sklearn_available
print(json.dumps({"sklearn_imported": "sklearn" in sys.modules, "scipy_imported": "scipy" in sys.modules,
                  "sklearn_available": is_sklearn_available(), "scipy_available": is_scipy_available()}))
"""


def _trims_probe(site: Path, env_extra: dict[str, str]) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if k != "VIT_TRAIN_IMPORT_TRIMS"}
    env.update(env_extra, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    p = subprocess.run([sys.executable, "-c", _TRIMS_PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_transformers_imports_neither_sklearn_nor_scipy_unless_trims_are_off(tmp_path: Path) -> None:
    site = _fake_site(tmp_path / "site", {"scikit-learn": "sklearn", "scipy": "scipy"}, {
        "sklearn.metrics": "def roc_curve(*a, **k):\n    raise NotImplementedError\n",
        "scipy.optimize": "def linear_sum_assignment(*a, **k):\n    raise NotImplementedError\n",
    })
    off = _trims_probe(site, {"VIT_TRAIN_IMPORT_TRIMS": "0"})  # transformers' own view: both imported
    assert off == {"sklearn_imported": True, "scipy_imported": True, "sklearn_available": True,
                   "scipy_available": True}, off
    on = _trims_probe(site, {})  # vit_train's default
    assert on == {"sklearn_imported": False, "scipy_imported": False, "sklearn_available": False,
                  "scipy_available": False}, on
