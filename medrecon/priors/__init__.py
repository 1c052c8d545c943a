"""2D diffusion priors behind one denoiser contract (see base.py); ``load_prior`` is the entry point."""
from .base import (MODEL_RANGE, Denoiser, GaussianDenoiser, IntensityMap, NoiseSchedule,  # noqa: F401
                   VESchedule, VPSchedule, schedule_from_dict, sigma_to_vp, vp_to_sigma)
from .card import CARD_NAME, default_card, read_model_card, write_model_card  # noqa: F401
from .loader import load_prior  # noqa: F401
from .network import EDMPrior, NetworkPrior, VEScorePrior, VPEpsPrior  # noqa: F401
from .patch import PatchData, PatchPrior, patchwise, position_channels, prepare_volumes  # noqa: F401
from .train import TrainOptions, heldout_loss, train_prior  # noqa: F401
from .training_data import SliceData, load_patch_data, load_slices, prepare_slices  # noqa: F401
