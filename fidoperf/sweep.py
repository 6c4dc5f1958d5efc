"""Compatibility path for the sweep API: ``from fidoperf.sweep import parse_vary, sweep``
(as the README shows) keeps working; the module lives in :mod:`fidoperf.whatif.sweep`."""

from .whatif.sweep import COLUMNS, best, check_vary, dtype_label, parse_vary, sweep

__all__ = ["COLUMNS", "best", "check_vary", "dtype_label", "parse_vary", "sweep"]
