"""Compile ColossalAI's (and bitsandbytes') import-time ``torch.compile`` functions on their first call instead.

Every Booster plugin import pulls in two ColossalAI modules that decorate functions with
``torch.compile`` at import time: ``colossalai.shardformer.layer.attn`` (one ring-attention helper)
and ``colossalai.quantization.fp8`` (fp8 cast/communication helpers: one always, six more when the
GPU's compute capability is 8.9 or higher, an H100). Building a compiled wrapper imports and sets
up inductor on the spot (``torch._inductor.compile_fx``: 0.5 s on the 2-core dev machine, more on
the H100 host, see BENCHMARKS.md, start-up), before the first step, for functions that only run
with ring attention, fp8 communication or fp8 linear layers, none of which this project enables.
The same import chain (``colossalai.quantization.bnb``) imports bitsandbytes, whose
``bitsandbytes.backends.default.ops`` (0.50) compiles four 4-/8-bit quantisation and 32-bit optimizer
helpers at import; this project calls none of them. Deferring it too keeps inductor out of start-up
(bitsandbytes 0.50.2, same-machine A/B, BENCHMARKS.md, start-up: imports 1.0 s shorter on the 2-core
dev machine; on the H200 host 1.4 s, and a tiny one-GPU run 10.3 -> 7.7 s, run 44).

:func:`install` registers an import hook (:mod:`vit_train.patches.import_hooks`) that runs those modules with
``torch.compile`` replaced by a deferring version: each decorated function is compiled with the
same arguments the first time it is called, and that compiled function serves every later call.
Nothing else is affected: the hook matches three module names, restores ``torch.compile`` when the
module has run, and leaves ``disable=True`` decorations as torch.compile does (the plain function).
``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1`` (the switch for all of vit_train's ColossalAI speed changes)
leaves the hook out.
"""

from __future__ import annotations

import functools
import threading
from types import ModuleType
from typing import Any, Callable

from vit_train.patches import import_hooks

# bitsandbytes.backends.default.ops (bitsandbytes 0.50; pulled in by colossalai.quantization.bnb, and
# by ColossalAI's GaLore optimizers) wraps four 4-/8-bit kernels in torch.compile at import.
TARGETS = frozenset({"colossalai.quantization.fp8", "colossalai.shardformer.layer.attn",
                     "bitsandbytes.backends.default.ops"})


class CompileOnFirstCall:
    """``fn`` compiled by ``torch.compile(fn, **kwargs)`` when first called; that compiled function
    serves every call (``compiled`` is None until then)."""

    def __init__(self, real_compile: Callable[..., Any], fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.fn, self.kwargs = fn, kwargs
        self.compiled: Callable[..., Any] | None = None
        self._real_compile = real_compile
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if self.compiled is None:
            with self._lock:
                if self.compiled is None:
                    self.compiled = self._real_compile(self.fn, **self.kwargs)
        return self.compiled(*args, **kw)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:  # as a method, like the function it wraps
        return self if obj is None else functools.partial(self, obj)


def _deferred_compile(real_compile: Callable[..., Any], model: Callable[..., Any] | None = None,
                      **kwargs: Any) -> Any:
    if model is None:  # used as ``@torch.compile(...)``: return the decorator
        return lambda fn: _deferred_compile(real_compile, fn, **kwargs)
    if kwargs.get("disable", False):
        return model
    return CompileOnFirstCall(real_compile, model, kwargs)


def _with_deferred_compile(module: ModuleType, run: Callable[[], None]) -> None:
    import torch

    real = torch.compile
    torch.compile = functools.partial(_deferred_compile, real)  # type: ignore[assignment]
    try:
        run()
    finally:
        torch.compile = real


def install() -> bool:
    """Add the hook (once; before ColossalAI's plugins are imported for it to matter). False when
    switched off or when the modules are already imported."""
    from vit_train.patches.patching import as_shipped

    if as_shipped():
        return False
    registered = [import_hooks.register(t, _with_deferred_compile) for t in sorted(TARGETS)]  # (all, no short cut)
    return any(registered)
