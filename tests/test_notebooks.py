"""The notebooks in notebooks/: run from scratch in a real Jupyter kernel, and checked as committed.

Every notebook is a jupytext percent script (``notebooks/NN_name.py``, the source) paired
with a committed ``NN_name.ipynb`` that holds the same cells and their outputs.

Each execution test reads the script with jupytext and runs it in a fresh ``python3``
kernel of the interpreter running the tests (a kernelspec written into a temporary
JUPYTER_DATA_DIR, searched first; JUPYTER_RUNTIME_DIR, JUPYTER_CONFIG_DIR, IPYTHONDIR and
MPLCONFIGDIR also point into ``tmp_path``, so nothing is written in the home directory;
this checkout comes first on the kernel's PYTHONPATH), with the notebook's folder as the
working directory; it fails on the first error or when the notebook overruns its time
limit, and then checks the outputs against numbers computed here. The committed files
are read, never written; a test checks they are left untouched.

Without a kernel: the committed notebooks carry their outputs (no errors, every code
cell executed, figures present), stay under 1.5 MB, are paired with their scripts, and
hold exactly their scripts' cells (resync with ``jupytext --sync notebooks/*.py``).

Notebook 03 runs JAX benchmarks on this machine (30-70 s on 2 CPU cores), hence
``slow``; it still runs in the default test command.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parent.parent
NB_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ["01_fido_analysis.ipynb", "02_what_if.ipynb", "03_validation.ipynb"]
PAIRING = "ipynb,py:percent"  # jupytext formats: each .ipynb with its percent script
TIMEOUT_S = {"01": 300, "02": 300, "03": 900}  # whole notebook, on a loaded 2-core CPU
MAX_BYTES = 1_500_000


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Jupyter, IPython and matplotlib folders inside tmp_path, and a python3
    kernelspec there that runs this interpreter (the user data dir is searched first)."""
    for var, sub in (
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "matplotlib"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")  # in a venv Jupyter would search the venv first
    # The kernel runs in notebooks/: import the fidoperf of this checkout, not an installed one.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    spec_dir = tmp_path / "jupyter-data" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fidoperf tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    from jupyter_client.kernelspec import KernelSpecManager

    # The lookup nbclient makes must find this spec, not one of the venv's or the system's.
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return tmp_path


def script(name: str) -> Path:
    """The jupytext script of notebook ``name`` (01_fido_analysis.ipynb -> 01_fido_analysis.py)."""
    return (NB_DIR / name).with_suffix(".py")


def execute(name: str) -> nbformat.NotebookNode:
    """Run notebook ``name``, read from its script, from scratch in memory; returns it
    with the outputs. Raises CellExecutionError on the first failing cell."""
    paths = [NB_DIR / name, script(name)]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    listing = sorted(p.name for p in NB_DIR.iterdir())
    nb = jupytext.read(script(name))
    limit = TIMEOUT_S[name[:2]]
    start = time.monotonic()
    client = NotebookClient(
        nb,
        kernel_name="python3",
        resources={"metadata": {"path": str(NB_DIR)}},
        allow_errors=False,
        record_timing=False,
        timeout=limit,
        # Each cell gets what is left of the notebook's limit: a per-notebook timeout.
        timeout_func=lambda cell: max(1, int(limit - (time.monotonic() - start))),
    )
    client.execute()
    elapsed = time.monotonic() - start
    assert elapsed <= limit, f"{name} took {elapsed:.0f} s, over its {limit} s limit"
    after = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert after == before, f"executing {name} changed its committed files"
    assert sorted(p.name for p in NB_DIR.iterdir()) == listing, f"executing {name} wrote into notebooks/"
    return nb


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs(nb):
    return [o for c in code_cells(nb) for o in c.get("outputs", [])]


def texts(nb) -> list[str]:
    """Every text the outputs hold: streams, plain-text reprs and Markdown."""
    out = []
    for o in outputs(nb):
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out += [o.data[k] for k in ("text/plain", "text/markdown") if k in o.data]
    return out


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def json_line(nb, prefix: str) -> dict:
    """The one ``prefix {json}`` line a notebook prints for machines."""
    found = [line[len(prefix) :] for t in texts(nb) for line in t.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting {prefix!r}, found {len(found)}"
    return json.loads(found[0])


def assert_clean(nb, name: str) -> None:
    """Every code cell ran, and no output is an error or a traceback."""
    errors = [o for o in outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    tracebacks = [
        o.text
        for o in outputs(nb)
        if o.output_type == "stream" and o.name == "stderr" and "Traceback" in o.text
    ]
    assert not tracebacks, f"{name}: traceback on stderr:\n{tracebacks[0]}"
    missing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not missing, f"{name}: code cells {missing} were not executed"


def table_rows(nb, header: str) -> list[str]:
    """Row labels of the DataFrame output whose plain-text repr contains ``header``."""
    frames = [t for t in texts(nb) if header in t]
    assert frames, f"no table with a column {header!r}"
    return [line.split("  ")[0].strip() for line in frames[0].splitlines()]


# --------------------------------------------------------------------------- committed files, no kernel


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_outputs_no_errors_and_is_small(name):
    path = NB_DIR / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size / 1e6:.2f} MB"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert_clean(nb, name)
    assert images(nb) >= 1, f"{name} was saved without its figures"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_paired_with_its_script(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    assert nb.metadata.get("jupytext", {}).get("formats") == PAIRING, f"{name} is not paired with its script"
    text = jupytext.read(script(name))
    assert text.metadata["jupytext"]["formats"] == PAIRING, f"{script(name).name}: header lacks {PAIRING}"
    assert text.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_cells_are_the_scripts(name):
    """The .ipynb files follow their scripts: editing a script without resyncing, or
    the .ipynb alone, fails here. Outputs and metadata are not compared."""
    expected = [(c.cell_type, c.source) for c in jupytext.read(script(name)).cells]
    committed = [(c.cell_type, c.source) for c in nbformat.read(NB_DIR / name, as_version=4).cells]
    resync = "resync with `jupytext --sync notebooks/*.py` (or `python notebooks/run_notebooks.py` to execute too)"
    for i, (want, got) in enumerate(zip(expected, committed), start=1):
        assert got == want, (
            f"{name} differs from {script(name).name} first at cell {i} of {len(expected)}:\n"
            f"--- {name} ({got[0]}):\n{got[1][:400]}\n--- {script(name).name} ({want[0]}):\n{want[1][:400]}\n"
            f"--- {resync}"
        )
    assert len(committed) == len(expected), (
        f"{name} has {len(committed)} cells, {script(name).name} {len(expected)}: the first "
        f"{min(len(committed), len(expected))} agree; {resync}"
    )


# --------------------------------------------------------------------------- executed from scratch


def test_notebook_01_fido_analysis(kernel_env):
    import fidoperf as fp

    nb = execute("01_fido_analysis.ipynb")
    assert_clean(nb, "01")
    rows = table_rows(nb, "decoder speedup vs FiD-Base")
    for label in ("FiD-Base", "+LSA (K=6)", "FiDO-Base", "FiDO-Base-XL", "FiDO-Large-XXL", "FiD-Large"):
        assert label in rows, f"time table lacks the {label} row: {rows}"
    assert images(nb) >= 4  # roofline, breakdown, derated per chip, scaling
    side = "\n".join(x for x in texts(nb) if "derated / roofline" in x)
    for needle in ("FiD-Base", "FiDO-Base", "FiDO-Large-XXL", "tpu-v4", "a100-80gb", "h100-sxm"):
        assert needle in side, f"the roofline/derated table lacks {needle}"
    multi = "\n".join(x for x in texts(nb) if "communication share" in x)
    assert "fido-large-xxl" in multi and "TP 8" in multi
    # The notebook's key numbers are fidoperf's for the paper's setting on TPU v4.
    key = json_line(nb, "key numbers: ")
    tpu, wl, roof = fp.load_hardware("tpu-v4"), fp.Workload(), fp.Settings(efficiency="roofline")
    fid = fp.predict(fp.load_model("fid-base"), tpu, wl, roof).totals
    fido = fp.predict(fp.load_model("fido-base"), tpu, wl, roof).totals
    xxl = fp.predict(fp.load_model("fido-large-xxl"), tpu, wl, roof).totals
    assert (key["hardware"], key["batch"], key["passages"]) == ("tpu-v4", wl.batch, wl.passages)
    expected = {
        "fid_base_time_per_sample_s": fid["time_per_sample_s"],
        "fido_base_time_per_sample_s": fido["time_per_sample_s"],
        "fido_large_xxl_time_per_sample_s": xxl["time_per_sample_s"],
        "fid_base_decoder_share_of_time": fid["decoder_share_of_time"],
        "fido_base_speedup": fid["time_per_sample_s"] / fido["time_per_sample_s"],
        "fido_base_decoder_speedup": fid["decoder_time_s"] / fido["decoder_time_s"],
    }
    for k, v in expected.items():
        assert key[k] == pytest.approx(v, rel=1e-9), k


def test_notebook_02_what_if(kernel_env):
    nb = execute("02_what_if.ipynb")
    assert_clean(nb, "02")
    text = "\n".join(texts(nb))
    assert "7,200 configurations" in text
    assert "best: " in text and "running" in text  # the capacity plan's recommendation
    # one-knob panels, roofline, breakdown, step vs batch, two plan figures, latency against load
    assert images(nb) >= 7
    rows = table_rows(nb, "kv heads G")  # the K x G table: K = 1, 2, 3, 6, 12
    assert {"1", "2", "3", "6", "12"} <= set(rows)
    rows = json_line(nb, "serving: ")["rows"]  # 2 chips x 2 models x 2 policies x 2 targets
    assert len(rows) == 16
    by = {(r["chip"], r["model"], r["policy"], r["target p99 (ms)"]): r for r in rows}
    for (chip, model, policy, target), r in by.items():
        assert 0 < r["queries/s"] <= r["capacity (queries/s)"], r
        assert r["alone p99 (ms)"] <= r["p99 (ms)"] <= target * 1.001, r
        if target == 100:  # a looser target never serves less
            assert by[(chip, model, policy, 1000)]["queries/s"] >= r["queries/s"], r


@pytest.mark.slow
def test_notebook_03_validation(kernel_env):
    from fidoperf.measure import bench

    nb = execute("03_validation.ipynb")
    assert_clean(nb, "03")
    v = json_line(nb, "validation: ")
    assert v["cases"] + v["skipped"] == len(bench.suite("quick"))
    assert v["cases"] >= 1
    assert math.isfinite(v["median_abs_rel_error"]) and v["median_abs_rel_error"] >= 0
    assert images(nb) == 1  # the parity plot
