"""Errors name what the user typed: a bad ``--batch`` says ``--batch``, not the
library's ``workload: batch``; a bad ``--kv-heads`` says ``--kv-heads``, not
``options: decoder.num_kv_heads``. Every command that takes the option is tried.

The library keeps naming its own fields (the Python API has no options).
"""

from __future__ import annotations

import pytest

from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_model, override_model

WORKLOAD_CASES = [
    (["--batch", "0"], "--batch"),
    (["-b", "-3"], "--batch"),
    (["--batch", "many"], "--batch"),
    (["--passages", "0"], "--passages"),
    (["-p", "-1"], "--passages"),
    (["--passage-len", "0"], "--passage-len"),
    (["--target-len", "0"], "--target-len"),
    (["--target-len", "1.5"], "--target-len"),
    (["--batch", str(10**18)], "--batch"),  # would overflow 64-bit counts
    (["--passage-len", str(10**8)], "--passage-len"),
    (["--dtype", "int4"], "--dtype"),
    (["--overlap", "sum"], "--overlap"),
]
MODEL_CASES = [
    (["--kv-heads", "0"], "--kv-heads"),
    (["--kv-heads", "5"], "--kv-heads"),
    (["--decoder-size", "small", "--kv-heads", "4"], "--kv-heads"),  # 4 does not divide small's 6 heads
    (["--cross-attn-every", "0"], "--cross-attn-every"),
    (["-m", "fid-base", "--cross-attn-every", "13"], "--cross-attn-every"),
    (["--decoder-layers", "0"], "--decoder-layers"),
    (["--decoder-layers", "5"], "--decoder-layers"),  # FiDO-Base's K = 6 > 5 layers
    (["--encoder-layers", "0"], "--encoder-layers"),
    (["--encoder-size", "medium"], "--encoder-size"),
    (["--decoder-size", "medium"], "--decoder-size"),
]
PLAN = ["plan", "--qps", "10", "--latency-ms", "500"]
COMMANDS = {
    "predict": (["predict"], WORKLOAD_CASES + MODEL_CASES),
    "sweep": (["sweep"], WORKLOAD_CASES + MODEL_CASES),
    "roofline": (["roofline"], WORKLOAD_CASES),
    "breakdown": (["breakdown"], WORKLOAD_CASES),
    "quality": (["quality"], WORKLOAD_CASES),
    "plan": (PLAN, [c for c in WORKLOAD_CASES if c[1] != "--batch"]),  # plan chooses the batch itself
}
CASES = [(cmd, prefix + args, option) for cmd, (prefix, cases) in COMMANDS.items() for args, option in cases]


@pytest.mark.parametrize("command,args,option", CASES, ids=[" ".join(a) for _, a, _ in CASES])
def test_bad_option_names_the_option(command, args, option, cli_error):
    line = cli_error(args)
    assert line.startswith("Error: "), line
    # The option as click writes it ('--batch' / '-b') or as ours do (--batch: ...).
    assert f"'{option}'" in line or f"{option}:" in line, f"{option} not named: {line}"
    for internal in ("workload:", "options:", "num_kv_heads:", "settings:"):
        assert internal not in line, f"library field {internal!r} shown instead of the option: {line}"


def test_a_consequence_names_the_option_and_the_field(cli_error):
    """--decoder-layers 5 is fine alone; it clashes with the model's period K = 6: the
    option the user typed comes first, then the model's field it violates."""
    line = cli_error(["predict", "--decoder-layers", "5"])
    assert line.startswith("Error: --decoder-layers: decoder.cross_attn_every: period 6 is larger"), line


@pytest.mark.parametrize("command", ["roofline", "breakdown", "plan"])
def test_what_if_suffix_names_the_model_option(command, cli_error):
    args = (PLAN if command == "plan" else [command]) + ["-m", "fid-base+kv5"]
    line = cli_error(args)
    assert line.startswith("Error: --model: fid-base+kv5: 5 key/value heads do not divide 12"), line


def test_sweep_override_that_fits_some_varied_models_stays_in_the_grid(tmp_path):
    """--kv-heads 4 divides base's 12 heads but not small's 6: with --vary decoder_size
    the bad configurations are rows with their reason, not an error of the option."""
    from click.testing import CliRunner

    from fidoperf.cli import cli

    out = tmp_path / "grid.csv"
    result = CliRunner().invoke(cli, ["sweep", "--kv-heads", "4", "--vary", "decoder_size=small,base", "-o", str(out)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    df = pd.read_csv(out)
    assert df["error"].notna().sum() == 1
    assert "num_kv_heads" in df.loc[df["error"].notna(), "error"].iloc[0]


def test_library_keeps_its_field_names():
    with pytest.raises(SpecError, match=r"^workload: batch: must be a whole number of at least 1, got 0$"):
        Workload(batch=0)
    with pytest.raises(SpecError, match=r"^options: decoder\.num_kv_heads: 5 key/value heads"):
        override_model(load_model("fido-base"), kv_heads=5)
