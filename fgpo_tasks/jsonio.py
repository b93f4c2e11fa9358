"""Strict JSON: what fgpo writes or prints parses with any JSON parser (no NaN, no Infinity).

``json.dumps`` writes ``NaN`` / ``Infinity`` for non-finite floats by default, which is not JSON
(RFC 8259): ``jq``, browsers and most languages refuse it. Here a non-finite number becomes
``null``; ``sanitize`` returns how many were replaced, so a writer that knows what the value
means can record the count next to it (``pd_mean: null, pd_missing: 12``). numpy scalars become
Python numbers, and other unknown objects (paths, timestamps) their ``str``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _scalar(value: Any) -> Any:
    """numpy / pandas scalars as Python values (duck-typed: no numpy import needed)."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():
        return item()
    return value


def sanitize(obj: Any) -> tuple[Any, int]:
    """(a copy of ``obj`` with every NaN / +-Infinity as None, how many were replaced)."""
    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        v = _scalar(v)
        if type(v).__name__ in ("NAType", "NaTType"):  # pandas' missing markers
            count += 1
            return None
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            count += 1
            return None
        if isinstance(v, dict):
            return {k if isinstance(k, (str, int, float, bool)) or k is None else str(k): walk(x)
                    for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy arrays
            return walk(v.tolist())
        return v

    return walk(obj), count


def _default(value: Any) -> Any:
    return str(value)


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN / Infinity (they become null); other kwargs as json's."""
    clean, _ = sanitize(obj)
    kwargs.setdefault("default", _default)
    return json.dumps(clean, allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, **kwargs: Any) -> int:
    """Write ``obj`` as strict JSON (+ newline); return how many non-finite numbers became null."""
    clean, count = sanitize(obj)
    kwargs.setdefault("default", _default)
    Path(path).write_text(json.dumps(clean, allow_nan=False, indent=indent, **kwargs) + "\n",
                          encoding="utf-8")
    return count


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity (as RFC 8259 does)."""
    return json.loads(text, parse_constant=_reject_constant)
