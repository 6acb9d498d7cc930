"""Library versions recorded in checkpoints, resolved configs and benchmark files."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "colossalai", "transformers", "datasets", "safetensors", "submitit"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
