"""One config dataclass per stage; this module loads them from YAML and reports bad fields.

Each stage's dataclass gives every field a default and help text (``field(metadata={"help"})``)
and checks cross-field constraints in ``__post_init__``, raising ``ConfigError`` that quotes the
bad value. ``load_config`` adds the checks every stage shares: unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fgpo_tasks.errors import ConfigError

T = TypeVar("T")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def from_dict(cls: type[T], values: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build ``cls`` from a mapping; unknown keys and mistyped values raise ``ConfigError``."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; "
                          f"known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{where}: field '{name}' must be {hints[name]}, got {value!r}")
        if hints[name] is float and isinstance(value, int):
            values[name] = float(value)
        if typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, section: str | None = None,
                **overrides: Any) -> T:
    """Config from an optional YAML file (optionally one section of it) plus overrides.

    Overrides that are ``None`` are ignored, so CLI flags left unset keep the file's values.
    """
    values: dict[str, Any] = {}
    where = "config"
    if path is not None:
        data = read_yaml(path)
        where = str(path)
        if section is not None:
            data = data.get(section, {}) or {}
            where = f"{path} [{section}]"
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=where)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (for manifests and MLflow params)."""
    return dataclasses.asdict(config)


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition``: for ``__post_init__`` checks."""
    if not condition:
        raise ConfigError(message)
