"""The command line, tested in-process with click's CliRunner (and in a subprocess where
the point is what a fresh interpreter imports), plus packaging: the installed wheel."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from fidoperf.cli import cli

OP_KEYS = {"phase", "layer", "op", "flops", "bytes", "intensity", "bound", "time_s"}
TOTAL_KEYS = {"encoder_flops", "decoder_flops", "encoder_bytes", "decoder_bytes", "encoder_time_s",
              "decoder_time_s", "time_per_sample_s", "max_batch"}


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"fidoperf {' '.join(map(str, args))}\n{result.output}"
    assert result.exception is None, result.exception
    return result


def strict_json(text):
    def no_nan(name):
        raise ValueError(f"{name} in JSON output")

    return json.loads(text, parse_constant=no_nan)


def all_commands(group=cli, prefix=()):
    """(path, command) of every command and subcommand, so new ones are covered."""
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


COMMANDS = list(all_commands())


# --------------------------------------------------------------------------- predict


def test_bare_predict_runs():
    out = run("predict").stdout
    assert "fido-base" in out and "tpu-v4" in out
    assert "40 passages x 256 tokens" in out and "batch 24" in out


def test_predict_json():
    out = strict_json(run("predict", "-f", "json", "--batch", "8", "--passages", "10").stdout)
    assert {"model", "hardware", "workload", "ops", "totals"} <= set(out)
    assert out["model"]["name"] == "fido-base" and out["hardware"]["name"] == "tpu-v4"
    assert out["workload"]["batch"] == 8 and out["workload"]["passages"] == 10
    assert out["ops"] and all(OP_KEYS <= set(r) for r in out["ops"])
    assert TOTAL_KEYS <= set(out["totals"])
    for r in out["ops"]:
        assert r["phase"] in ("encoder", "cross_kv", "decoder")
        assert r["bound"] in ("compute", "memory")
        assert r["layer"] is None or isinstance(r["layer"], int)
        for key in ("flops", "bytes", "intensity", "time_s"):  # SI numbers, not formatted text
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (key, r)
    # The totals are per sample: the op rows of a phase divided by the batch.
    for ph in ("encoder", "decoder"):
        rows = [r for r in out["ops"] if r["phase"] == ph]
        assert out["totals"][f"{ph}_flops"] * 8 == pytest.approx(sum(r["flops"] for r in rows), rel=1e-9)
        assert out["totals"][f"{ph}_time_s"] * 8 == pytest.approx(sum(r["time_s"] for r in rows), rel=1e-9)
    assert isinstance(out["totals"]["max_batch"], int) and out["totals"]["max_batch"] > 0


def test_predict_csv_matches_json():
    args = ("predict", "-m", "fid-base", "--passages", "12", "--target-len", "8")
    records = strict_json(run(*args, "-f", "json").stdout)["ops"]
    df = pd.read_csv(io.StringIO(run(*args, "-f", "csv").stdout), dtype={"layer": "Int64"})
    assert OP_KEYS <= set(df.columns)
    assert len(df) == len(records)
    for row, rec in zip(df.to_dict(orient="records"), records, strict=True):
        assert (row["phase"], row["op"], row["bound"]) == (rec["phase"], rec["op"], rec["bound"])
        assert (None if pd.isna(row["layer"]) else int(row["layer"])) == rec["layer"]
        for key in ("flops", "bytes", "intensity", "time_s"):
            assert row[key] == pytest.approx(rec[key], rel=1e-12), key


def test_predict_markdown_has_a_table():
    lines = run("predict", "-f", "markdown").stdout.splitlines()
    rule = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")
    seps = [i for i, line in enumerate(lines) if rule.match(line)]
    assert seps, "no Markdown table separator row"
    for i in seps:
        header, body = lines[i - 1], lines[i + 1]
        assert header.startswith("|") and body.startswith("|")
        assert header.count("|") == lines[i].count("|") == body.count("|")
    assert any("cross_attn_logits" in line and line.startswith("|") for line in lines)


def test_predict_output_file(tmp_path):
    path = tmp_path / "p.json"
    run("predict", "-f", "json", "-o", path)
    assert strict_json(path.read_text()) == strict_json(run("predict", "-f", "json").stdout)


def test_predict_options_change_the_prediction():
    base = strict_json(run("predict", "-m", "fid-base", "-f", "json").stdout)
    mqa = strict_json(run("predict", "-m", "fid-base", "--kv-heads", "1", "--cross-attn-every", "6",
                          "-f", "json").stdout)
    assert mqa["model"]["decoder"]["num_kv_heads"] == 1
    assert mqa["model"]["decoder"]["cross_attn_layers"] == [5, 11]
    assert mqa["totals"]["decoder_bytes"] < base["totals"]["decoder_bytes"]
    assert mqa["totals"]["encoder_flops"] == base["totals"]["encoder_flops"]


# --------------------------------------------------------------------------- bad options

BAD_OPTIONS = [
    (["--batch", "0"], r"batch"),
    (["--batch", "-3"], r"batch"),
    (["--passages", "-1"], r"passages"),
    (["--passages", "0"], r"passages"),
    (["--passage-len", "0"], r"passage[-_]len"),
    (["--target-len", "0"], r"target[-_]len"),
    (["--kv-heads", "5"], r"kv[-_]heads"),
    (["--kv-heads", "0"], r"kv[-_]heads"),
    (["-m", "fid-base", "--cross-attn-every", "13"], r"cross[-_]attn[-_]every"),
    (["--cross-attn-every", "0"], r"cross[-_]attn[-_]every"),
    (["--decoder-layers", "5"], r"cross[-_]attn[-_]every"),  # FiDO-Base has K = 6 > 5 layers
    (["--decoder-layers", "0"], r"num[-_]layers|decoder[-_]layers"),
    (["--decoder-size", "medium"], r"--decoder-size"),
    (["--dtype", "int4"], r"--dtype"),
    (["--batch", "many"], r"--batch"),
]


@pytest.mark.parametrize("args,field", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_gives_one_line(args, field, cli_error):
    line = cli_error(["predict", *args])
    assert re.search(field, line), f"{field!r} not named in: {line}"


# --------------------------------------------------------------------------- list, help, README


def test_list_names_every_shipped_file(repo_root):
    out = run("list").stdout
    files = sorted((repo_root / "hardware").glob("*.yaml")) + sorted((repo_root / "models").glob("*.yaml"))
    assert len(files) > 10
    for path in files:
        assert re.search(rf"(?m)^{re.escape(path.stem)}\s", out), f"{path.name} not listed"
    listed = strict_json(run("list", "-f", "json").stdout)
    for kind, folder in (("hardware", "hardware"), ("models", "models")):
        stems = {p.stem for p in (repo_root / folder).glob("*.yaml")}
        assert {x["name"] for x in listed[kind]} == stems


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(path, cmd):
    result = run(*path, "--help")
    assert result.stdout.startswith("Usage:")
    assert cmd.get_short_help_str().strip(), f"`fidoperf {' '.join(path)}` has no help text"


def test_main_help_lists_every_command():
    out = run("--help").stdout
    for (name,), _ in [(p, c) for p, c in COMMANDS if len(p) == 1]:
        assert re.search(rf"(?m)^\s+{re.escape(name)}\b", out), name


def test_readme_names_every_command(repo_root):
    readme = repo_root / "README.md"
    assert readme.is_file(), "README.md is missing: it must document every `fidoperf` command"
    text = readme.read_text()
    names = [" ".join(p) for p, _ in COMMANDS]
    missing = [n for n in names if not re.search(rf"fidoperf {re.escape(n)}\b", text)]
    assert not missing, f"README.md does not mention: {', '.join('fidoperf ' + m for m in missing)}"


HEAVY = ("jax", "matplotlib", "pandas")


def _imported_after(argv_list):
    code = (
        "import sys, fidoperf.cli as c\n"
        f"for argv in {argv_list!r}:\n"
        "    try:\n"
        "        c.cli.main(argv, prog_name='fidoperf')\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_help_imports_no_heavy_modules():
    assert _imported_after([["--help"]]) == []


def test_command_help_imports_no_heavy_modules():
    assert _imported_after([[*p, "--help"] for p, _ in COMMANDS]) == []


def test_python_m_fidoperf(repo_root):
    proc = subprocess.run([sys.executable, "-m", "fidoperf", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:") and "predict" in proc.stdout


# --------------------------------------------------------------------------- library and packaging


def test_package_level_predict_is_the_function():
    """The example in fidoperf/__init__.py's docstring, after anything imported the module
    fidoperf.costmodel.prediction (the CLI, fidoperf.present.report and fp.Settings all do)."""
    import fidoperf as fp

    fp.Settings  # noqa: B018 (imports fidoperf.costmodel.prediction, as any real session does)
    assert not inspect.ismodule(fp.predict), "fidoperf.predict is the submodule, not the function"
    p = fp.predict(fp.load_model("fido-base"), fp.load_hardware("tpu-v4"), fp.Workload(batch=24))
    assert p.totals["time_per_sample_s"] > 0


@pytest.mark.slow
def test_installed_wheel_ships_its_data(tmp_path, repo_root):
    """Build a wheel from a copy of the checkout, install it into a folder, and use it from
    a directory where the checkout is not on the path."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo_root / name).is_file():
            shutil.copy(repo_root / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("fidoperf", "hardware", "models"):
        shutil.copytree(repo_root / name, src / name, ignore=ignore)
    dist, site = tmp_path / "dist", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    hint = ""
    if "bdist_wheel" in build.stdout + build.stderr:
        hint = "\nhint: this environment cannot build wheels offline: `pip install 'setuptools>=69' wheel`"
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:] + hint
    wheels = list(dist.glob("fidoperf-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    shipped = ([f"fidoperf/hardware/{p.name}" for p in (repo_root / "hardware").glob("*.yaml")]
               + [f"fidoperf/models/{p.name}" for p in (repo_root / "models").glob("*.yaml")]
               + ["fidoperf/models/sizes/t5-v1.1.yaml", "fidoperf/py.typed"])
    assert not [n for n in shipped if n not in names], "data files missing from the wheel"

    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              "--target", str(site), str(wheels[0])],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        "import json, fidoperf\n"
        "from fidoperf.costmodel.prediction import predict\n"
        "hw, m = fidoperf.load_hardware('tpu-v4'), fidoperf.load_model('fido-base')\n"
        "p = predict(m, hw, fidoperf.Workload())\n"
        "print(json.dumps({'pkg': fidoperf.__file__, 'hw': hw.path, 'model': m.path,\n"
        "                  'models': fidoperf.model_names(), 'time': p.totals['time_per_sample_s']}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("pkg", "hw", "model"):
        assert got[key].startswith(str(site)), f"{key} came from {got[key]}, not the installed wheel"
    assert set(got["models"]) == {p.stem for p in (repo_root / "models").glob("*.yaml")}
    assert got["time"] > 0
    cmd = subprocess.run([sys.executable, "-m", "fidoperf", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cmd.returncode == 0 and "tpu-v4" in cmd.stdout and "fido-base" in cmd.stdout, cmd.stderr[-3000:]
