"""The typer application that every `pipelines.commands_*` module registers its subcommands on."""
import math
from typing import get_args, get_origin

import typer
from typer import BadParameter
from typer.core import TyperCommand

from medrecon import __version__


def _not_finite(param, values):
    """The one line for a number option given NaN or infinity, naming it."""
    from medrecon.errors import InputError

    return InputError(f"{param.opts[0]} {' '.join(f'{x:g}' for x in values)}: give finite numbers")


def check_finite(ctx) -> None:
    """Every number option is finite (click's types let nan and inf through): one line naming the option, before
    the command runs."""
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        values = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise _not_finite(p, values)


def _takes_floats(param) -> bool:
    """Whether a parameter's values are floats (float, Optional[float], a tuple or list of floats)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is float or (get_origin(annotation) in (tuple, list) and float in get_args(annotation))


def _given_floats(command, ctx, args, param):
    """The values given on the command line to a float option, as floats; None if not given or not numbers."""
    opts, _, _ = command.make_parser(ctx).parse_args(args=list(args))
    given = opts.get(param.name)
    if given is None:
        return None
    flat = []
    for item in given if isinstance(given, (tuple, list)) else (given,):
        flat.extend(item if isinstance(item, (tuple, list)) else (item,))
    try:
        return tuple(float(x) for x in flat)
    except (TypeError, ValueError):
        return None


class FiniteCommand(TyperCommand):
    """A command that refuses NaN and infinite number options (check_finite) before its body runs."""

    def parse_args(self, ctx, args):
        """NaN or infinity given to a float option with a range (``min=``/``max=``) is refused by the range at
        parse time, before ``invoke``, in the range's words ("greater than or equal to 0" for nan): the shared
        line of check_finite instead, as for every other number option."""
        given = list(args)  # the parser consumes ``args``
        try:
            return super().parse_args(ctx, args)
        except BadParameter as exc:
            values = _given_floats(self, ctx, given, exc.param) if _takes_floats(exc.param) else None
            if values is not None and not all(math.isfinite(x) for x in values):
                raise _not_finite(exc.param, values) from None
            raise

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
