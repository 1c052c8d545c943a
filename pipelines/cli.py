"""The `medrecon` command line. Orchestration only: parse, call the pipelines, print.

Errors that are the user's to fix (medrecon.MedreconError) are printed as one line without a
traceback and exit with status 2.
"""
from __future__ import annotations

import logging
import sys

import typer

from medrecon import MedreconError

from .app import app
# Each module registers its subcommands on `app`.
from . import commands_io, commands_train, commands_recon, commands_demo  # noqa: F401,E402
from . import commands_pacs  # noqa: F401,E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        rc = app(args=argv, standalone_mode=False)
    except MedreconError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
