"""Reading spec files: YAML loaded with a safe loader (the data ``yaml.safe_load``
gives: no Python objects) into checked fields.

Any bytes and any YAML document give a valid result or one
:class:`~fidoperf.errors.SpecError` line naming the file and, where there is one,
the field; the limits below bound what a file can cost in time and memory.
"""

from __future__ import annotations

import codecs
import datetime
import math
import reprlib
import sys
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

# Spec files are a few kB. These limits bound the time and memory any file can cost,
# whatever its bytes: a file larger than MAX_FILE_BYTES is refused unread; a document
# nested deeper than MAX_DEPTH or with more than MAX_NODES nodes once its aliases are
# expanded is refused before it is turned into Python objects. Anchors and aliases stay
# allowed (a user may reuse a `source:`), but nine aliases of nine aliases of ... (the
# "billion laughs") stop at the node count.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 50
MAX_NODES = 100_000


_CONSTRUCT_ERRORS = (ValueError, OverflowError, KeyError, AttributeError, TypeError, IndexError)


class _Limits:
    """What ``yaml.safe_load`` does (plain data only: the safe constructor and resolver),
    refusing deep nesting while composing (composing recurses once per level) and
    naming the line of a scalar that cannot be constructed."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node, deep=False):
        # Scalars that match a YAML type but not Python's range (2024-13-45, a number
        # of 5000 digits), or that an explicit tag forces on them (!!bool maybe,
        # !!timestamp soon), raise plain Python errors in PyYAML: name the line instead.
        try:
            return super().construct_object(node, deep)
        except SpecError:
            raise
        except _CONSTRUCT_ERRORS as err:
            kind = {"timestamp": "a date", "int": "a whole number", "float": "a number",
                    "bool": "true or false"}.get(node.tag.rsplit(":", 1)[-1], node.tag)
            text = node.value if isinstance(node.value, str) else ""
            why = f" ({_one_line(str(err).split(';')[0])})" if isinstance(err, (ValueError, OverflowError)) else ""
            raise SpecError(self.name, "", f"bad value at line {node.start_mark.line + 1}: {shown(text)} "
                                           f"is not {kind}{why}") from None


class _SpecLoader(_Limits, yaml.SafeLoader):
    """Pure-Python scanner and parser (PyYAML without libyaml)."""


try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml
    _CSpecLoader = None
else:

    class _CSpecLoader(_Limits, yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor,
                       yaml.resolver.Resolver):
        """libyaml's scanner and parser (C, about 8x faster), with PyYAML's Python
        composer (for the depth limit), safe constructor and resolver: the same data
        as ``yaml.safe_load``."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


def _check_nodes(root: yaml.Node, path: Path) -> None:
    """Refuse a composed document that is recursive (an alias inside its own anchor),
    nested too deeply or too large once aliases are expanded, or has a duplicate key.
    Iterative, with the size of every shared node counted once per use."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) when expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node):
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return node.value if isinstance(node, yaml.SequenceNode) else []

    def fail(node, what, detail):
        raise SpecError(path, "", f"{what} at line {node.start_mark.line + 1}: {detail}")

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            kids = [size[id(k)] for k in children(node)]
            count = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if count > MAX_NODES:
                fail(node, "document too large", f"more than {MAX_NODES:,} values once aliases are expanded")
            if depth > MAX_DEPTH:
                fail(node, "nested too deeply", f"more than {MAX_DEPTH} levels once aliases are expanded")
            size[key] = (count, depth)
            continue
        if key in size:
            continue
        if key in open_nodes:
            fail(node, "recursive alias", "an alias refers to a node that contains it")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in seen:
                        fail(k, "duplicate key", shown(k.value))
                    seen.add((k.tag, k.value))
        stack.append((node, True))
        stack.extend((k, False) for k in children(node) if id(k) not in size)


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 text (a byte-order mark allowed; UTF-16 with its mark, as some editors save)."""
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise SpecError(path, "", f"not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset {err.start}); "
                                  "expected YAML text") from None
    if "\x00" in text:
        raise SpecError(path, "", f"not a text file (NUL byte at offset {text.index(chr(0))}); expected YAML text")
    return text


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping, with a safe loader (plain data only).

    Any bytes give either a dict or one :class:`SpecError` naming the file: unreadable
    files, binary or non-UTF-8 content, malformed YAML, out-of-range dates and numbers,
    recursive, too deep or too large documents (see the limits above), duplicate keys,
    and a top level that is not a mapping. Keys need not be strings (the field checks
    reject unknown keys).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise SpecError(path, "", f"cannot read file ({err.strerror or err})") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(path, "", f"file too large for a spec (more than {MAX_FILE_BYTES:,} bytes)")
    text = _decode(data, path)
    loader = None
    try:
        loader = (_CSpecLoader or _SpecLoader)(text)  # checks for unprintable characters
        loader.name = str(path)  # PyYAML's name for the stream, used in messages
        node = loader.get_single_node()
        if node is None:
            raise SpecError(path, "", "empty file: expected a mapping of fields at the top level")
        _check_nodes(node, path)
        doc = loader.construct_document(node)
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        char = err.character if isinstance(err.character, int) else 0
        raise SpecError(path, "", f"not YAML text: character U+{char:04X} at line {line} "
                                  "is not allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = ", ".join(p for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise SpecError(path, "", f"malformed YAML{where}: {_one_line(problem) or 'invalid YAML'}") from None
    except SpecError:
        raise
    except RecursionError:  # the limits above should prevent it; never a traceback
        raise SpecError(path, "", f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    except _CONSTRUCT_ERRORS as err:  # a PyYAML constructor failing outside a scalar
        raise SpecError(path, "", f"malformed YAML: {type(err).__name__}: {_one_line(err)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(doc, dict):
        raise SpecError(path, "", f"expected a mapping of fields at the top level, got {_kind(doc)}")
    return doc


def _kind(value: Any) -> str:
    names = {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false",
             type(None): "nothing"}
    return names.get(type(value), f"a {type(value).__name__}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def shown(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for an error message: one line, at most about ``limit``
    characters, safe for recursive, huge or deeply nested values."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Repr(reprlib.Repr):
    def repr_int(self, x, level):  # repr() of a number of over 4300 digits raises
        return f"<about {int(x.bit_length() * 0.30103)} digits>" if x.bit_length() > 128 else repr(x)


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 60


def check_plain(value: Any, err, key: str) -> None:
    """Free-form data (a profile's ``measured`` section) must be what JSON can carry:
    text, finite numbers, true/false, null, dates, and lists and mappings (text keys)
    of them. ``err(key, problem)`` makes the error; iterative, so any depth is fine."""
    stack = [(key, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise err(where, f"keys must be text, got {shown(k)}")
                stack.append((f"{where}.{k}", item))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise err(where, f"expected a finite number, got {shown(v)}")
        elif isinstance(v, int) and abs(v) > MAX_WHOLE:
            raise err(where, f"number too large, got {shown(v)}")
        elif not isinstance(v, (str, int, float, bool, datetime.date)) and v is not None:
            raise err(where, f"expected text, a number, a date, a list or a mapping, got {shown(v)}")


# Whole numbers in specs (layers, widths, heads, vocabulary) stay below 2**53, where
# every integer is exact as a float; a larger one is a typo, and would overflow later.
MAX_WHOLE = 2**53


class Fields:
    """Reads typed fields out of one mapping, rejecting unknown and missing keys.

    Takes any mapping (keys of any type, values of any type) and raises only
    :class:`SpecError`; values in messages are shortened (see :func:`shown`).
    """

    def __init__(self, data: Mapping[str, Any], where: str, prefix: str = ""):
        if not isinstance(data, Mapping):
            raise SpecError(where, prefix.rstrip(".") or "(top)", f"expected a mapping, got {shown(data)}")
        self.data, self.where, self.prefix = data, where, prefix
        self.seen: set[str] = set()

    def err(self, key: Any, problem: str) -> SpecError:
        return SpecError(self.where, self.prefix + (key if isinstance(key, str) else shown(key)), problem)

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
            raise self.err(key, f"expected a non-empty string, got {shown(value)}")
        return value

    def int(self, key: str, default: Any = ..., minimum: int = 1, maximum: int = MAX_WHOLE) -> int:
        value = self.raw(key, default)
        if value is default and default is not ... and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected a whole number, got {shown(value)}")
        if value < minimum:
            raise self.err(key, f"must be at least {minimum}, got {shown(value)}")
        if value > maximum:
            raise self.err(key, f"must be at most {maximum:,}, got {shown(value)}")
        return value

    def number(self, key: str, default: Any = ..., positive: bool = True) -> float:
        value = self.raw(key, default)
        return as_number(value, self.err, key, positive)

    def bool(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {shown(value)}")
        return value

    def done(self) -> None:
        """Reject the first key (in the file's order) that no reader asked for."""
        for key in self.data:
            if key not in self.seen:
                raise self.err(key, "unknown field")


def as_number(value: Any, err, key: str, positive: bool = True) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e12 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise err(key, f"expected a number, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"expected a number, got {shown(value)}")
    if isinstance(value, int) and abs(value) > sys.float_info.max:  # float() would overflow
        raise err(key, f"expected a finite number, got {shown(value)}")
    if not math.isfinite(value):
        raise err(key, f"expected a finite number, got {shown(value)}")
    if positive and value <= 0:
        raise err(key, f"must be positive, got {shown(value)}")
    return float(value)


def is_file(text: str | Path) -> bool:
    """``Path(text).is_file()``, False for names the system cannot even look up (too
    long, a NUL byte) instead of an exception."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def resolve_path(name_or_path: str | Path, folder: str, names) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or is_file(text):
        path = Path(text)
        if not is_file(path):
            raise SpecError(text, "", "no such file")
        return path
    path = data_dir(folder) / f"{text}.yaml"
    if not is_file(path):
        raise SpecError(
            f"--{'model' if folder == 'models' else folder}", "",
            f"unknown {folder.rstrip('s')} {shown(text)} (known: {', '.join(names())}; "
            "or give a path to a YAML file)",
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
