"""The `fidoperf` command group: every command registered, errors made one line.

The command modules define their commands without importing this one, so the
dependencies point one way: this module -> the command modules -> ``options``.
"""

from __future__ import annotations

import click

from .bench import bench, calibrate, validate
from .op import op
from .options import InputError
from .plots import breakdown, plan, quality, roofline, scaling
from .predict import list_cmd, predict
from .simulate import simulate
from .sweep import sweep


class FidoGroup(click.Group):
    def invoke(self, ctx):
        from ..errors import SpecError

        try:
            return super().invoke(ctx)
        except SpecError as err:
            if err.where == "layout":  # a layout comes from the layout options: name the option
                raise InputError(f"--{err.field.replace('_', '-')}: {err.problem}") from None
            raise InputError(str(err)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:  # click's own four-line usage errors, as one line
            raise InputError(err.format_message()) from None
        except MemoryError:
            raise InputError("out of memory: try a smaller grid or suite") from None
        except OverflowError:
            raise InputError("a size too large to count in 64 bits: try smaller sizes") from None


@click.group(cls=FidoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fidoperf")
def cli():
    """Roofline performance model of FiD and FiDO (Fusion-in-Decoder) inference.

    Predicts FLOPs, memory traffic, operational intensity and latency per operator
    of T5 encoder-decoder models that read many retrieved passages, on datasheet or
    measured hardware profiles, and checks the predictions against JAX runs.
    """


def main():
    cli(prog_name="fidoperf")


for command in (list_cmd, predict, op, sweep, simulate, roofline, breakdown, scaling, quality, plan, calibrate,
                bench, validate):
    cli.add_command(command)
