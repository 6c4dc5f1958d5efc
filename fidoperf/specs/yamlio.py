"""Reading spec files: YAML loaded with a safe loader into checked fields.

Every problem raises :class:`~fidoperf.errors.SpecError` naming the file and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError


def data_dir(name: str) -> Path:
    """Folder of the shipped YAML files (`hardware`, `models`): inside the package in
    an installed wheel, at the top of the checkout in an editable install."""
    package = Path(__file__).resolve().parent.parent  # fidoperf/
    installed = package / name
    return installed if installed.is_dir() else package.parent / name


# --------------------------------------------------------------------------- reading YAML


def read_yaml(path: Path | str) -> dict[str, Any]:
    """``yaml.safe_load`` a file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, "", f"cannot read file ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError(path, "", f"malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "", "expected a mapping of fields at the top level")
    return data


class Fields:
    """Reads typed fields out of one mapping, rejecting unknown and missing keys."""

    def __init__(self, data: Mapping[str, Any], where: str, prefix: str = ""):
        if not isinstance(data, Mapping):
            raise SpecError(where, prefix.rstrip(".") or "(top)", "expected a mapping")
        self.data, self.where, self.prefix = data, where, prefix
        self.seen: set[str] = set()

    def err(self, key: str, problem: str) -> SpecError:
        return SpecError(self.where, self.prefix + key, problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ..., required: bool = True) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is not ...:
            return default
        raise self.err(key, "missing required field")

    def str(self, key: str, default: Any = ...) -> str:
        value = self.raw(key, default)
        if value is None or not isinstance(value, str) or not value.strip():
            if value is default and default is not ...:
                return value
            raise self.err(key, f"expected a non-empty string, got {value!r}")
        return value

    def int(self, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self.raw(key, default)
        if value is default and default is not ... and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.err(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = ..., positive: bool = True) -> float:
        value = self.raw(key, default)
        return as_number(value, self.err, key, positive)

    def bool(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.err(str(unknown[0]), "unknown field")


def as_number(value: Any, err, key: str, positive: bool = True) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e12 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise err(key, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise err(key, f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise err(key, f"must be positive, got {value!r}")
    return float(value)



def resolve_path(name_or_path: str | Path, folder: str, names) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise SpecError(text, "", "no such file")
        return path
    path = data_dir(folder) / f"{text}.yaml"
    if not path.is_file():
        raise SpecError(
            f"--{'model' if folder == 'models' else folder}", "",
            f"unknown {folder.rstrip('s')} {text!r} (known: {', '.join(names())}; or give a path to a YAML file)",
        )
    return path


@dataclass(frozen=True)
class Sourced:
    """A figure and where it comes from."""

    value: float | None
    source: str
    note: str = ""


def sourced(f: Fields, key: str, nullable: bool = False, required: bool = True) -> Sourced | None:
    """The ``{value, source, note}`` figure ``key`` of ``f`` (a number with its source)."""
    if not f.has(key) and not required:
        f.seen.add(key)
        return None
    g = Fields(f.raw(key), f.where, f.prefix + key + ".")
    value = g.raw("value")
    if not (nullable and value is None):
        value = as_number(value, g.err, "value")
    out = Sourced(value, g.str("source"), g.str("note", ""))
    g.done()
    return out
