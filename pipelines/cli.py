"""The `medrecon` command line. Orchestration only: parse, call the pipelines, print.

Errors that are the user's to fix (medrecon.MedreconError) are printed as one line without a
traceback and exit with status 2, as are usage errors (click's usage message).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import typer

from medrecon import MedreconError
from medrecon.errors import one_line, printed

from . import OVERRIDES_FROM
from .app import app
# Each module registers its subcommands on `app`.
from . import commands_io, commands_train, commands_recon, commands_demo, commands_data  # noqa: F401,E402
from . import commands_pacs  # noqa: F401,E402


class _OneLine(logging.Formatter):
    """A log line with its message's control characters escaped (``one_line``)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: temporary outputs are removed as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    token = OVERRIDES_FROM.set("--set")  # config errors name an override by the option that gave it
    try:
        return _main(argv)
    finally:
        OVERRIDES_FROM.reset(token)


def _main(argv: list[str] | None) -> int:
    console = logging.StreamHandler()
    console.setFormatter(_OneLine("warning: %(message)s"))  # a path holding a newline stays on the warning's line
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    if threading.current_thread() is threading.main_thread():  # SIGTERM (a batch system's time limit, docker stop)
        signal.signal(signal.SIGTERM, _terminated)
    try:
        # standalone mode: usage errors (unknown option or command, missing or bad value, no arguments)
        # print click's usage message and exit 2; typer.Exit gives its code; Ctrl-C exits 130, SIGTERM 143.
        app(args=argv, standalone_mode=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            typer.echo(f"interrupted ({signal.Signals(code - 128).name}): nothing half-written is kept, what was "
                       "finished stays (a batch's done series, a training run's saved state: --resume goes on where "
                       "one was saved)", err=True)
        return code
    except MedreconError as e:
        typer.secho(f"error: {printed(e)}", err=True, fg=typer.colors.RED)
        return 2
    except MemoryError:
        typer.secho("error: not enough memory for this problem: reduce the image size, the slices, the views or "
                    "solver.chunk_size (ct.image_size / ct.pixel_size / ct.n_views, mri.image_size)", err=True,
                    fg=typer.colors.RED)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
