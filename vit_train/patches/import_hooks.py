"""Run a few named third-party modules through a wrapper when they are first imported.

Start-up changes (:mod:`vit_train.patches.lazy_compile`, :mod:`vit_train.patches.startup`) need to act while or
right after a given library module executes: swap ``torch.compile`` for the duration of a ColossalAI
module, or adjust transformers' table of optional packages before the rest of transformers reads
it. :func:`register` names the module and an ``around(module, run)`` function, which must call
``run()`` (the module's real execution) once. One finder on ``sys.meta_path`` serves every
registration; it answers only for registered names that are not imported yet and hands every other
import to the normal machinery untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable

Around = Callable[[ModuleType, Callable[[], None]], None]
"""``around(module, run)``: code before and after ``run()``, which executes the module."""


class _WrappingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, around: Around) -> None:
        self._inner, self._around = inner, around

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._around(module, lambda: self._inner.exec_module(module))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:  # get_source/get_code etc. for tracebacks and inspect
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.hooks: dict[str, Around] = {}

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        around = self.hooks.get(fullname)
        if around is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappingLoader(spec.loader, around)
        return spec


def _finder() -> _Finder:
    for f in sys.meta_path:
        if isinstance(f, _Finder):
            return f
    f = _Finder()
    sys.meta_path.insert(0, f)
    return f


def register(name: str, around: Around) -> bool:
    """Wrap the first import of module ``name``; False (nothing registered) if it is already imported."""
    if name in sys.modules:
        return False
    _finder().hooks.setdefault(name, around)
    return True

