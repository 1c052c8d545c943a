"""The typer application that every `pipelines.commands_*` module registers its subcommands on."""
import math
from typing import get_args, get_origin

import typer
from typer.core import TyperCommand

try:  # typer's internals (0.29): the conversion of a parameter, built from its descriptor
    from typer._coercion import build_runtime_param
except ImportError:  # a typer without them: NaN is refused when the command is invoked (_refuse_not_finite)
    build_runtime_param = None

from medrecon import __version__
from medrecon.errors import one_line


def _not_finite(param, values):
    """The one line for a number option given NaN or infinity, naming it."""
    from medrecon.errors import InputError

    return InputError(f"{param.opts[0]} {' '.join(f'{x:g}' for x in values)}: give finite numbers")


def _takes_floats(param) -> bool:
    """Whether a parameter's values are floats (float, Optional[float], a tuple or list of floats)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is float or (get_origin(annotation) in (tuple, list) and float in get_args(annotation))


def _as_floats(value) -> tuple[float, ...] | None:
    """A float option's value as given (a string or a number, or tuples and lists of them) as floats, flattened;
    None if it is not numbers (its own conversion then says why)."""
    if isinstance(value, (tuple, list)):
        parts = [_as_floats(v) for v in value]
        return None if None in parts else tuple(x for part in parts for x in part)
    try:
        return (float(value),)
    except (TypeError, ValueError):
        return None


class _FiniteFloats:
    """A float option's conversion with NaN and infinity refused first, in one line naming the option: typer's
    float lets them through, and its range (``min=``/``max=``) refused nan in its own words ("greater than or
    equal to 0")."""

    def __init__(self, descriptor):
        self.descriptor = descriptor  # the option's type and range, as typer resolved them
        self.converter = None  # typer's own, built on first use (not for every command at startup), then kept

    def coerce(self, value, param, ctx):
        values = _as_floats(value)
        if values is not None and not all(math.isfinite(x) for x in values):
            raise _not_finite(param, values)
        if self.converter is None:
            self.converter = build_runtime_param(self.descriptor)
        return self.converter.coerce(value, param=param, ctx=ctx)


def _refuse_not_finite(ctx) -> None:
    """The fallback where typer's conversion slot is missing: NaN and infinity refused when the command is invoked
    (a float option with a range may refuse them first, in the range's words)."""
    for p in ctx.command.params:
        values = _as_floats(ctx.params.get(p.name)) if _takes_floats(p) else None
        if values is not None and not all(math.isfinite(x) for x in values):
            raise _not_finite(p, values)


class FiniteCommand(TyperCommand):
    """A command whose float options refuse NaN and infinity as their values are converted (_FiniteFloats), or,
    where this typer has no slot for that, when it is invoked (_refuse_not_finite)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.converts = build_runtime_param is not None and all(
            hasattr(p, "_runtime_param") for p in self.params if _takes_floats(p))
        for p in self.params:
            if self.converts and _takes_floats(p):
                p._runtime_param = _FiniteFloats(p.type_descriptor)  # (typer's slot for the parameter's conversion)

    def invoke(self, ctx):
        if not self.converts:
            _refuse_not_finite(ctx)
        return super().invoke(ctx)


class Typer(typer.Typer):
    """typer.Typer whose commands are FiniteCommands: the app and its sub-apps (`data`, `pacs`) are made with it."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or FiniteCommand, **kwargs)


def say(line: str, err: bool = False, **style) -> None:
    """Print one line of a command's output as its errors are printed (``one_line``): a path or a DICOM
    description holding a newline or a terminal escape stays on its line, escaped. Styled only when ``style`` is
    given: ``secho`` without one still ends the line with a reset escape on a terminal."""
    if style:
        typer.secho(one_line(line), err=err, **style)
    else:
        typer.echo(one_line(line), err=err)


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
