"""The priors that ship inside the package (``medrecon/assets/priors/NAME``), named ``bundled:NAME`` (no torch)."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

BUNDLED_PRIORS = Path(__file__).resolve().parent / "assets" / "priors"
PREFIX = "bundled:"


def bundled_prior_path(spec: str) -> Path:
    """``bundled:NAME`` -> the bundled prior's folder, or an InputError listing the bundled priors."""
    name = spec[len(PREFIX):]
    have = sorted(p.name for p in BUNDLED_PRIORS.iterdir() if (p / "model_card.yaml").is_file())
    if name not in have:  # also keeps bundled:../x inside the package's priors
        raise InputError(f"{spec}: no such bundled prior; the bundled priors are "
                         f"{', '.join(PREFIX + n for n in have)}")
    return BUNDLED_PRIORS / name
