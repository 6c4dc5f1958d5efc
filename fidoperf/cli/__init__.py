"""The `fidoperf` command line: a thin layer over the library (see :mod:`.main`)."""

from .main import cli, main

__all__ = ["cli", "main"]
