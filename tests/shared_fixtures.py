"""Where the checkpoint fixtures of the public model formats live: $MEDRECON_FIXTURES, else the project's
shared/fixtures folder beside the repository (as CI lays it out), else /work/shared/fixtures."""
import os
from pathlib import Path


def fixtures_root() -> Path:
    for cand in (os.environ.get("MEDRECON_FIXTURES"), Path(__file__).resolve().parents[2] / "shared" / "fixtures",
                 "/work/shared/fixtures"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return Path("/work/shared/fixtures")  # absent: the tests that need it skip


def rel_err(a, b):
    """Per-sample max |a - b| / max |b| (the golden-output criterion of FORMATS.md)."""
    return (a - b).abs().flatten(1).max(1).values / b.abs().flatten(1).max(1).values
