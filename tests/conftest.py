"""Fixtures shared by the core tests (costs, specs, CLI, paper).

Kept small: a made-up pure-roofline chip with round numbers (so times can be
checked by hand), the shipped TPU v4 profile, and a helper that runs the CLI
in-process and checks the one-line error contract.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parent.parent

# A chip with round figures: 100 TFLOP/s (bf16, fp16), 50 TFLOP/s fp32, 200 TOP/s int8,
# 1 TB/s, 16 GB; efficiency 1.0 and no per-op overhead (the loader's defaults).
ROUND_CHIP_YAML = """\
name: round-chip
description: made-up chip with round numbers, for tests
peak_flops_per_s:
  bf16: {value: 100.0e+12, source: "made up for tests"}
  fp16: {value: 100.0e+12, source: "made up for tests"}
  fp32: {value: 50.0e+12, source: "made up for tests"}
  int8: {value: 200.0e+12, source: "made up for tests"}
memory:
  capacity_bytes: {value: 16.0e+9, source: "made up for tests"}
  bandwidth_bytes_per_s: {value: 1.0e+12, source: "made up for tests"}
"""


def halve_second_point(curve: dict) -> None:
    """Break a calibrated bytes curve the way a cache-warm smallest transfer does: the
    second point streams at half the rate of the first."""
    pts = curve["points"]
    pts[1] = [pts[1][0], pts[0][1] / 2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def round_chip():
    """The made-up pure-roofline chip above, read through the real YAML loader."""
    import yaml

    from fidoperf.specs import hardware_from_dict

    return hardware_from_dict(yaml.safe_load(ROUND_CHIP_YAML), "round-chip.yaml")


@pytest.fixture(scope="session")
def tpu_v4():
    from fidoperf.specs import load_hardware

    return load_hardware("tpu-v4")


@pytest.fixture
def write_yaml(tmp_path):
    """write_yaml("name.yaml", text) -> path of a dedented file in tmp_path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def cli_error():
    """cli_error(args, *needles): run `fidoperf ARGS` in-process and check the error
    contract: exit status 2, exactly one line (on stderr), naming every needle
    (case-sensitive substrings), nothing on stdout, no traceback. Returns the line."""
    from fidoperf.cli import cli

    def run(args, *needles):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        shown = f"args={args!r}\nexit={result.exit_code}\noutput:\n{result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"uncaught {type(result.exception).__name__}: {result.exception}\n{shown}")
        assert result.exit_code == 2, shown
        assert "Traceback" not in result.output, shown
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected exactly one line on stderr\n{shown}"
        assert result.stdout.strip() == "", shown
        for needle in needles:
            assert needle in lines[0], f"{needle!r} not named in the error\n{shown}"
        return lines[0]

    return run
