"""The typer application that every `pipelines.commands_*` module registers its subcommands on."""
import typer

from medrecon import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="3D reconstruction of undersampled CT and MRI with 2D diffusion priors and z-TV.")


def _version(value: bool):
    if value:
        typer.echo(f"medrecon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """medrecon: DICOM/NIfTI in, DICOM/NIfTI out."""
