"""Model cards: a small YAML file next to the weights that says what the prior is and how to use it.

Fields (all plain YAML):

``format``            ``medrecon-model-card/1``
``name``              short identifier used in reports
``architecture``      ``ncsnpp`` (score_sde) | ``adm`` (guided-diffusion) | ``diffusers-unet2d`` (medrecon's own,
                      whole slices) | ``diffusers-unet2d-patch`` (medrecon's own patch prior, see patch.py:
                      a ``patch`` section {sizes, inference_size, positions, seed} and
                      ``pixel_spacing_mm_range`` [min, max]; ``image_size`` null: any size)
``parameterization``  ``ve-score`` | ``vp-eps`` | ``edm``
``weights``           weights file, relative to the card's folder
``config``            network configuration (architecture specific)
``schedule``          noise schedule: ``{type: ve, sigma_min, sigma_max, num_scales}`` or
                      ``{type: vp, beta_start, beta_end, num_timesteps}``
``image_size``        slice size the network was trained at (square)
``pixel_spacing_mm``  in-plane spacing of the training slices (x, y), or null when unknown
``modality``          ``ct`` | ``mri``
``intensity``         physical units -> model range: ``{physical_min, physical_max, model_min, model_max, unit}``
                      plus, for MRI, ``normalisation`` (how each volume was scaled before the map)
``training``          data description, exact command, steps, final loss, ...; a run that skipped its final sample
                      grid: ``sample_grid_skipped`` (why) and, once drawn, ``sample_grid_drawn`` {path, samples,
                      steps}, with the ``sample_grid`` note for people (``samples.skipped_grid``)
``assumptions``       list of statements that were guessed rather than known (the user may override them)
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml

from ..errors import InputError
from .adm import AAPM256_CONFIG as ADM_AAPM256
from .ncsnpp import AAPM256_CONFIG as NCSNPP_AAPM256

CARD_NAME = "model_card.yaml"
CARD_FORMAT = "medrecon-model-card/1"
ARCHITECTURES = ("ncsnpp", "adm", "diffusers-unet2d", "diffusers-unet2d-patch")

# What the public checkpoint formats are as networks (parameterisation, network config, noise schedule),
# whatever data they were trained on. What they were trained on (modality, intensity map, pixel size,
# provenance) is not the core's to know: callers pass it as a card (pipelines.prior_cards holds the
# AAPM CT cards of the DiffusionMBIR and DDS checkpoints).
ARCH_DEFAULTS = {
    "ncsnpp": {"format": CARD_FORMAT, "architecture": "ncsnpp", "parameterization": "ve-score",
               "config": NCSNPP_AAPM256,
               "schedule": {"type": "ve", "sigma_min": 0.01, "sigma_max": 378.0, "num_scales": 2000},
               "image_size": 256},
    "adm": {"format": CARD_FORMAT, "architecture": "adm", "parameterization": "vp-eps", "config": ADM_AAPM256,
            "schedule": {"type": "vp", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000},
            "image_size": 256},
}


def default_card(architecture: str) -> dict:
    """A deep copy of the network-level defaults of a public checkpoint format (no data, no intensity)."""
    return copy.deepcopy(ARCH_DEFAULTS[architecture])


def merge_cards(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``; nested dicts are merged key by key."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge_cards(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _plain(v):
    """YAML-safe plain Python: tuples -> lists, numpy/torch scalars and arrays -> numbers/lists, Path -> str."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (Path, str)):  # str subclasses too (torch.__version__)
        return str(v)
    if hasattr(v, "tolist"):  # numpy or torch
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_model_card(path: str | Path, card: dict) -> Path:
    """Write ``card`` as YAML to ``path`` (a folder gets ``model_card.yaml``); returns the file written. Atomic
    (``atomic_path``), so a reader (or an interrupted rewrite of a prior's card) never sees half a card."""
    from ..io.atomic import atomic_path

    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    card = {"format": CARD_FORMAT, **_plain(card)}
    with atomic_path(path, overwrite=True, marker=False) as tmp:
        tmp.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110))
    return path


def read_model_card(path: str | Path) -> dict:
    """Read a model card (the YAML file, or a folder holding ``model_card.yaml``); InputError if unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    if not path.is_file():
        raise InputError(f"{path}: model card not found; a prior folder needs a {CARD_NAME} "
                         "(medrecon train writes one; for a public checkpoint write one or load the file itself)")
    try:
        card = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e}); fix the model card") from None
    if not isinstance(card, dict):
        raise InputError(f"{path}: a model card must be a YAML mapping (key: value), got {type(card).__name__}")
    arch = card.get("architecture")
    if arch is not None and arch not in ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return card
