"""Regenerate the notebooks from their jupytext scripts, execute them, save them with outputs.

Each notebook is a jupytext percent script, ``notebooks/NN_name.py`` (the source: edit and
review this one), paired with ``NN_name.ipynb``, its executed copy, committed with outputs so
that it reads well on a code host. ``tests/test_notebooks.py`` checks that every committed
``.ipynb`` holds its script's cells and executes every script again from scratch.

Usage, from the repository root::

    .venv/bin/python notebooks/run_notebooks.py          # all three
    .venv/bin/python notebooks/run_notebooks.py 01 02    # only these (name prefixes)

After editing a script, ``.venv/bin/jupytext --sync notebooks/*.py`` updates the cells of
the ``.ipynb`` files and keeps their outputs; this script does the same, then runs every
cell in a fresh kernel of this interpreter, in ``notebooks/``, and replaces the outputs.
By hand that is ``jupyter execute --inplace notebooks/NN_name.ipynb``; this script also
keeps Jupyter's, IPython's and matplotlib's folders out of the home directory, records no
timestamps in the cells (smaller diffs), imports the ``fidoperf`` of this checkout, and
stops a notebook that overruns its time limit.

Notebook 03 runs JAX benchmarks on this machine (30-70 s on 2 CPU cores): rerun it only when
its cells change, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
NOTEBOOKS = ["01_fido_analysis", "02_what_if", "03_validation"]
TIMEOUT_S = {"01": 300, "02": 300, "03": 900}  # per notebook, on a loaded 2-core CPU


def jupyter_env(root: Path) -> dict[str, str]:
    """Environment variables that keep Jupyter, IPython and matplotlib out of the home
    directory, a ``python3`` kernelspec under ``root`` that runs this interpreter, and
    this checkout first on the kernel's import path."""
    dirs = {
        key: root / sub
        for key, sub in (
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_CONFIG_DIR", "config"),
            ("IPYTHONDIR", "ipython"),
            ("MPLCONFIGDIR", "matplotlib"),
        )
    }
    spec_dir = dirs["JUPYTER_DATA_DIR"] / "kernels" / "python3"
    for d in [*dirs.values(), spec_dir]:
        d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    # In a venv Jupyter searches the venv's kernelspecs before the user's: not here.
    return {key: str(d) for key, d in dirs.items()} | {"JUPYTER_PREFER_ENV_PATH": "0", "PYTHONPATH": path}


def run(name: str) -> float:
    """Update ``name``.ipynb's cells from ``name``.py, execute it from scratch, save it.
    Returns the execution time (s); raises on the first failing cell."""
    import nbformat
    from jupytext.cli import jupytext
    from nbclient import NotebookClient

    jupytext(["--quiet", "--to", "ipynb", "--update", str(HERE / f"{name}.py")])
    path = HERE / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    limit = TIMEOUT_S[name[:2]]
    start = time.monotonic()
    NotebookClient(
        nb,
        kernel_name=nb.metadata["kernelspec"]["name"],
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
        timeout=limit,
        # Each cell gets what is left of the notebook's limit: a per-notebook timeout.
        timeout_func=lambda cell: max(1, int(limit - (time.monotonic() - start))),
    ).execute()
    took = time.monotonic() - start
    nbformat.write(nb, path)
    (HERE / f"{name}.py").touch()  # the script stays the newer of the pair, as jupytext leaves it
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to run (name prefixes, e.g. 01); default: all")
    args = ap.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(n.startswith(p) for p in args.names)]
    if not names:
        ap.error(f"no notebook matches {' '.join(args.names)} (known: {', '.join(NOTEBOOKS)})")
    with tempfile.TemporaryDirectory(prefix="fidoperf-notebooks-") as tmp:
        saved = dict(os.environ)
        os.environ.update(jupyter_env(Path(tmp)))
        try:
            for name in names:
                took = run(name)
                path = HERE / f"{name}.ipynb"
                print(
                    f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size / 1e3:.0f} kB), "
                    f"executed in {took:.1f} s"
                )
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
