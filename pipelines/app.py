"""The typer application that every `pipelines.commands_*` module registers its subcommands on."""
import math

import typer
from typer.core import TyperCommand

from medrecon import __version__


def check_finite(ctx) -> None:
    """Every number option is finite (click's types and ranges let nan and inf through): one line naming the
    option, before the command runs."""
    from medrecon.errors import InputError

    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        values = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise InputError(f"{p.opts[0]} {' '.join(f'{x:g}' for x in values)}: give finite numbers")


class FiniteCommand(TyperCommand):
    """A command that refuses NaN and infinite number options (check_finite) before its body runs."""

    def invoke(self, ctx):
        check_finite(ctx)
        return super().invoke(ctx)


class Typer(typer.Typer):
    """typer.Typer whose commands are FiniteCommands: the app and its sub-apps (`data`, `pacs`) are made with it."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or FiniteCommand, **kwargs)


app = Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
            help="3D reconstruction of undersampled CT and MRI with 2D diffusion priors and z-TV.")


def _version(value: bool):
    if value:
        typer.echo(f"medrecon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """medrecon: DICOM/NIfTI in, DICOM/NIfTI out."""
