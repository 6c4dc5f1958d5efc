"""Reading CSV tables (operator shapes, request traces) into checked DataFrames.

A table is a header row of column names and one row per record, as a spreadsheet
saves it (comma-separated, UTF-8, quotes as in RFC 4180). Every problem raises one
:class:`~fidoperf.errors.SpecError` that names the option and file, the row as a
spreadsheet numbers it (the header is row 1, the first record row 2) and the column.

Rules, the same for every table:
- The required columns must all be present; optional ones take their default when
  absent. A column that is neither is refused (a misspelt optional column would
  otherwise be ignored without a word); the message lists the known columns.
- Cells are read by the column's kind: ``int`` (a whole number >= 0; ``2.0`` and
  ``1e3`` are whole), ``positive_int`` (>= 1), ``float`` (finite, >= 0),
  ``positive_float`` (> 0), ``bool`` (true/false/1/0, any case) or ``str`` (non-empty
  text). Python's ``int``, ``float``, ``bool`` and ``str`` stand for the kinds of
  those names. Empty cells, NaN, infinities, negative and non-numeric values are refused.
- Blank lines are skipped (they still count as rows); every other row must have as
  many cells as the header. A table with no records is refused.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from .yamlio import MAX_WHOLE, shown

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("int", "positive_int", "float", "positive_float", "bool", "str")
# Traces of a million requests are tens of MB; this bounds what one file can cost.
MAX_TABLE_BYTES = 500_000_000
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


def _kind(kind: Any) -> str:
    kind = {int: "int", float: "float", bool: "bool", str: "str"}.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown column kind {kind!r} (known: {', '.join(KINDS)})")  # a programming error
    return kind


def read_table(
    path: Path | str,
    columns: Mapping[str, Any],
    where_option: str = "",
    optional: Mapping[str, tuple[Any, Any]] | None = None,
) -> pd.DataFrame:
    """Read the CSV file ``path`` into a DataFrame with the ``columns`` (name -> kind),
    in that order, then the ``optional`` ones (name -> (kind, default)).

    ``where_option`` is the option the file was given with (``--trace``); errors start
    with it and the file name. Returns int64, float64, bool and object (str) columns;
    raises :class:`SpecError` for anything else, whatever the file's bytes.
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    where = f"{where_option} {path}" if where_option else str(path)
    required = {name: _kind(k) for name, k in columns.items()}
    extra = {name: (_kind(k), default) for name, (k, default) in (optional or {}).items()}
    known = list(required) + [n for n in extra if n not in required]

    def fail(field: str, problem: str) -> SpecError:
        return SpecError(where, field, problem)

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TABLE_BYTES + 1)
    except OSError as err:
        raise fail("", f"cannot read file ({err.strerror or err})") from None
    if len(data) > MAX_TABLE_BYTES:
        raise fail("", f"file too large (more than {MAX_TABLE_BYTES:,} bytes)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise fail("", f"not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset {err.start}); "
                       "expected a CSV table") from None
    if "\x00" in text:
        raise fail("", f"not a text file (NUL byte at offset {text.index(chr(0))}); expected a CSV table")

    # Records, numbered as a spreadsheet shows them: the header is row 1.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    number = 0
    try:
        for record in reader:
            number += 1
            if any(cell.strip() for cell in record):
                rows.append((number, record))
    except csv.Error as err:
        raise fail(f"row {number + 1}", f"not a CSV table: {err}") from None

    if not rows:
        raise fail("", f"empty file: expected a header row with the columns {', '.join(known)}")
    header_row, header = rows[0]
    names = [h.strip() for h in header]
    for i, name in enumerate(names, start=1):
        if not name:
            raise fail(f"row {header_row}", f"column {i} of the header has no name")
        if name in names[: i - 1]:
            raise fail(f"row {header_row}", f"column {shown(name)} appears twice in the header")
        if name not in required and name not in extra:
            raise fail(f"column {shown(name)}", f"unknown column (known: {', '.join(known)})")
    missing = [n for n in required if n not in names]
    if missing:
        raise fail(f"column {missing[0]}", f"missing required column (the header has: {', '.join(names)})")
    records = rows[1:]
    if not records:
        raise fail("", "no data rows below the header")
    for number, record in records:
        if len(record) != len(names):
            raise fail(f"row {number}", f"{len(record)} cells, but the header has {len(names)} columns")

    numbers = np.array([n for n, _ in records])
    cells = {name: [r[i].strip() for _, r in records] for i, name in enumerate(names)}
    out = {}
    for name in known:
        kind = required[name] if name in required else extra[name][0]
        if name not in cells:
            out[name] = [extra[name][1]] * len(records)
            continue
        out[name] = _column(cells[name], kind, numbers, lambda n, p, c=name: fail(f"row {n}, column {c}", p))
    return pd.DataFrame(out, columns=known)


def _column(values: list[str], kind: str, numbers, fail):
    """One column of cells (stripped strings) as an array of ``kind``; ``fail(row,
    problem)`` makes the error for the first bad cell."""
    import numpy as np
    import pandas as pd

    empty = [i for i, v in enumerate(values) if not v]
    if empty:
        raise fail(numbers[empty[0]], "empty cell")
    if kind == "str":
        return np.array(values, dtype=object)
    if kind == "bool":
        low = [v.lower() for v in values]
        for i, v in enumerate(low):
            if v not in _TRUE and v not in _FALSE:
                raise fail(numbers[i], f"expected true or false (or 1 or 0), got {shown(values[i])}")
        return np.array([v in _TRUE for v in low], dtype=bool)
    try:
        parsed = np.asarray(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype=float)
    except (OverflowError, ValueError, TypeError):  # pandas kept Python objects: read one by one
        parsed = np.array([_float(v) for v in values])
    bad = np.flatnonzero(~np.isfinite(parsed))
    if bad.size:
        i = bad[0]
        what = "a number" if math.isnan(_float(values[i])) and values[i].lower() != "nan" else "a finite number"
        raise fail(numbers[i], f"expected {what}, got {shown(values[i])}")
    minimum = 1 if kind.startswith("positive") else 0
    low = np.flatnonzero(parsed <= 0 if kind == "positive_float" else parsed < minimum)
    if low.size:
        i = low[0]
        problem = "must be positive" if minimum else "must not be negative"
        raise fail(numbers[i], f"{problem}, got {shown(values[i])}")
    if kind in ("int", "positive_int"):
        odd = np.flatnonzero((parsed != np.floor(parsed)) | (parsed > MAX_WHOLE))
        if odd.size:
            i = odd[0]
            problem = "expected a whole number" if parsed[i] <= MAX_WHOLE else f"must be at most {MAX_WHOLE:,}"
            raise fail(numbers[i], f"{problem}, got {shown(values[i])}")
        return parsed.astype(np.int64)
    return parsed


def _float(text: str) -> float:
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return math.nan
    return value
