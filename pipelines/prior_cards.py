"""What the public checkpoints were trained on: their default model cards, and loading a configured prior.

The core (``medrecon.priors``) recognises the public formats (score_sde NCSN++, guided-diffusion ADM) and
knows their network defaults, but not their data. The DiffusionMBIR and DDS checkpoints are CT priors
trained on AAPM 2016 slices; the cards below say so (with the guesses marked in ``assumptions``) and
reach the core through ``load_prior(..., defaults=PUBLIC_CARDS)``. A card found beside the checkpoint,
or a prior folder with its own ``model_card.yaml`` (medrecon's own priors), wins key by key.
"""
from __future__ import annotations

import copy

from medrecon.device import resolve_device
from medrecon.priors import load_prior
from medrecon.priors.base import Denoiser

from .config import resolve_prior_path

# Assumed intensity mapping of the public AAPM checkpoints (DiffusionMBIR, DDS): slices in [0, 1].
AAPM_INTENSITY = {"physical_min": -1024.0, "physical_max": 3071.0, "model_min": 0.0, "model_max": 1.0,
                  "unit": "HU"}
AAPM_ASSUMPTIONS = [
    "intensity: the AAPM training slices are taken to be HU linearly mapped from [-1024, 3071] to [0, 1] "
    "(the 12-bit CT range); the published code does not state the window. Override in model_card.yaml.",
    "pixel_spacing_mm: AAPM 2016 Grand Challenge slices (512x512, about 0.7 mm) downsampled to 256x256 "
    "are taken to be about 1.5 mm per pixel. Override in model_card.yaml.",
]

PUBLIC_CARDS = {
    "ncsnpp": {
        "image_size": 256, "pixel_spacing_mm": [1.5, 1.5], "modality": "ct", "intensity": AAPM_INTENSITY,
        "training": {"data": "AAPM 2016 Low Dose CT Grand Challenge, axial slices at 256x256 (DiffusionMBIR)",
                     "command": "score_sde main.py --config configs/ve/AAPM_256_ncsnpp_continuous.py",
                     "source": "DiffusionMBIR checkpoint_185.pth"},
        "assumptions": AAPM_ASSUMPTIONS,
    },
    "adm": {
        "image_size": 256, "pixel_spacing_mm": [1.5, 1.5], "modality": "ct", "intensity": AAPM_INTENSITY,
        "training": {"data": "AAPM 2016 Low Dose CT Grand Challenge, axial slices at 256x256 (DDS)",
                     "command": "guided-diffusion image_train.py with DDS configs/vp/AAPM256.yml",
                     "source": "DDS AAPM256_1M.pt"},
        "assumptions": AAPM_ASSUMPTIONS,
    },
}


def public_card(architecture: str) -> dict:
    """A deep copy of the default card of a public checkpoint format ('ncsnpp' | 'adm')."""
    return copy.deepcopy(PUBLIC_CARDS[architecture])


def load_prior_for(path, device="cpu", card=None, allow_unsafe_pickle: bool = False) -> Denoiser:
    """Load the prior at ``path`` (a folder, a checkpoint or ``bundled:NAME``) for the pipelines:
    medrecon.priors.load_prior with the public checkpoints' default cards (used only where the checkpoint comes
    without its own card) and the device resolved by medrecon.device.resolve_device ('auto' | 'cpu' | 'cuda' |
    'cuda:N')."""
    return load_prior(resolve_prior_path(str(path)), device=resolve_device(device), card=card,
                      allow_unsafe_pickle=allow_unsafe_pickle, defaults=PUBLIC_CARDS)


__all__ = ["AAPM_INTENSITY", "PUBLIC_CARDS", "public_card", "load_prior_for"]
