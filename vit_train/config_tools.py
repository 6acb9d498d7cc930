"""The error type and the dict / dotted-key conversions every config dataclass shares.

Kept apart from :mod:`vit_train.config` so that sections owned elsewhere (the parallel layout in
:mod:`vit_train.distributed.layout`) validate the same way without importing the root config.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


def fail(field_name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"{field_name}={value!r}: {fix}")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def field_type(cls: type, name: str) -> str:
    return next(str(f.type) for f in dataclasses.fields(cls) if f.name == name)


def build_section(name: str, cls: type, value: Any) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}={value!r}: must be a mapping of {cls.__name__} fields")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'{name}.{u}' for u in unknown]}; valid keys in {name}: {', '.join(fields)}")
    return cls(**{k: coerce(f"{name}.{k}", fields[k], v) for k, v in value.items()})


def coerce(key: str, type_str: str, value: Any) -> Any:
    """Turn YAML/CLI values into the field's type; say which field and type when it cannot."""
    optional = "None" in type_str
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}=None: this field needs a value of type {type_str}")
    base = type_str.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if base.startswith("tuple[float"):
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            return tuple(float(v) for v in value)
        if base.startswith("tuple[str"):  # a YAML list, or "a,b" from the command line
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {base}") from None
    return value


def reject_unknown(where: str, d: Mapping[str, Any], valid: Any) -> None:
    """Fail on keys of ``d`` not in ``valid``, listing the valid ones (and the closest match)."""
    unknown = [k for k in d if k not in valid]
    if unknown:
        hints = [m for k in unknown for m in difflib.get_close_matches(str(k), list(valid), n=1)]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {', '.join(valid)}")
