"""Formatting for people (tables, terminal); CSV and JSON keep SI base units."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import numpy as np
import pandas as pd


def si(value: float, unit: str, digits: int = 3) -> str:
    """12345e9, "FLOP" -> "12.3 TFLOP"; decimal prefixes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return f"0 {unit}"
    prefixes = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"),
                (1e-6, "µ"), (1e-9, "n")]
    for scale, p in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {p}{unit}"
    return f"{value:.{digits}g} {unit}"


def seconds(value: float) -> str:
    return si(value, "s")


def to_json(obj: Any) -> str:
    """JSON with NaN and infinities as null (JSON has no NaN)."""
    return json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (pd.Timestamp, datetime.date)):  # also a YAML date in a profile's `measured`
        return o.isoformat()
    if o is pd.NA:
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def text_table(df: pd.DataFrame, markdown: bool = False) -> str:
    """A plain aligned table, or a GitHub Markdown table."""
    cols = [str(c) for c in df.columns]
    cells = [[("" if (v is None or v is pd.NA) else str(v)) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) or all(_looks_numeric(r[i]) for r in cells)
               for i, c in enumerate(df.columns)]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(cols)]
    if markdown:
        out.append("|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                                  for w, num in zip(widths, numeric)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells]
    return "\n".join(out)


def _looks_numeric(s: str) -> bool:
    s = s.split(" ")[0].rstrip("x%")
    try:
        float(s)
        return True
    except ValueError:
        return s in ("", "-")
