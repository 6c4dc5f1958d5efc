"""Regenerate the example figures in docs/figures/ and the example plan in docs/.

Run from the repository root:  .venv/bin/python docs/figures/make_figures.py
"""

from pathlib import Path

from click.testing import CliRunner

from fidoperf.cli import cli, write_atomic
from fidoperf.cli.plots import figure_bytes
from fidoperf.present import plots
from fidoperf.specs import load_hardware, load_model

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent


def run(*args: str) -> None:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output


def main() -> None:
    run("roofline", "-H", "tpu-v4", "-o", str(HERE / "roofline-tpu-v4.png"))
    run("breakdown", "-H", "tpu-v4", "-o", str(HERE / "breakdown-tpu-v4.png"))
    run("quality", "-H", "tpu-v4", "-o", str(HERE / "quality-vs-cost-tpu-v4.png"))
    tpu = load_hardware("tpu-v4")
    models = [load_model(m) for m in ("fid-base", "fido-base", "fido-large-xxl")]
    table = plots.decoder_step_table(models, tpu)
    ax = plots.decoder_step_vs(
        None, table, title="Decoder time per step on tpu-v4 (256 tokens per passage, 32 target tokens, bf16)"
    )
    write_atomic(HERE / "decoder-step-vs-batch-tpu-v4.png", figure_bytes(ax, "png"))
    plan = ["plan", "--qps", "100", "--latency-ms", "500"]
    plan += ["-m", "fid-base", "-m", "fido-base", "-m", "fido-base-xl"]
    plan += ["-H", "tpu-v4", "-H", "a100-80gb", "-H", "h100-sxm"]
    run(*plan, "-o", str(DOCS / "example-plan.md"))
    run(*plan, "-o", str(DOCS / "example-plan.html"))


if __name__ == "__main__":
    main()
