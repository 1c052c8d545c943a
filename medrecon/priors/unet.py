"""medrecon's own prior format: a diffusers ``UNet2DModel`` saved with ``save_pretrained`` (config.json +
diffusion_pytorch_model.safetensors) next to a model card, used through EDM preconditioning.

Why EDM (Karras et al. 2022) rather than eps-prediction on a VP grid: the network input and its training
target have unit variance at every noise level and the loss weight balances the levels, so a small
network learns useful denoising in a few hundred CPU steps; the result is natively a denoiser D(x, sigma)
in continuous sigma, so no grid snapping or VE/VP conversion is needed and every sampler can use it.
Training data are in [-1, 1] (sigma_data = 0.5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
# Noise levels for sampling an EDM prior trained on [-1, 1] data (Karras et al.: 0.002 ... 80).
EDM_SCHEDULE = {"type": "ve", "sigma_min": 0.002, "sigma_max": 80.0, "num_scales": 1000}


def unet_config(image_size: int = 64, channels: tuple[int, ...] = (32, 64, 128, 128), layers_per_block: int = 1,
                norm_num_groups: int = 8, attention_head_dim: int = 32, in_channels: int = 1,
                attention: bool = True) -> dict:
    """UNet2DModel keyword arguments for a prior with one output channel: ADM-like (scale-shift time
    conditioning), self-attention only at the coarsest level and in the middle block (cheap at small sizes).

    ``in_channels``: 1 for a whole-slice prior; 3 for a patch prior (the image and two position channels,
    see patch.py). ``attention=False`` drops the coarsest level's self-attention (the middle block keeps
    its own), which is cheaper on CPU."""
    channels = tuple(int(c) for c in channels)
    levels = len(channels)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image size {image_size} must be divisible by 2^{levels - 1} for {levels} UNet levels")
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"channel widths {bad} are not divisible by norm_num_groups={norm_num_groups}")
    return {
        "sample_size": int(image_size), "in_channels": int(in_channels), "out_channels": 1,
        "block_out_channels": list(channels), "layers_per_block": int(layers_per_block),
        "down_block_types": ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D" if attention else "DownBlock2D"],
        "up_block_types": ["AttnUpBlock2D" if attention else "UpBlock2D"] + ["UpBlock2D"] * (levels - 1),
        "norm_num_groups": int(norm_num_groups), "attention_head_dim": min(int(attention_head_dim), channels[-1]),
        "resnet_time_scale_shift": "scale_shift", "time_embedding_type": "positional",
        "flip_sin_to_cos": True, "freq_shift": 0,
    }


def build_unet(config: dict):
    """A diffusers UNet2DModel from its config (diffusers is imported here: it takes seconds)."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(dict(config))


def read_unet_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / CONFIG_NAME).read_text())


def share_as_umask(path: str | Path) -> None:
    """Give ``path`` the mode an ordinary new file gets (0o666 less the umask): safetensors creates its file
    owner-only (0600) whatever the umask, so colleagues could not read a prior whose card they could."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status): setting it to read
    it would, for that instant, let another thread (a PACS listener's storage) create world-writable files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: the old way, with the most restrictive value in the gap
    os.umask(mask)
    return mask


def save_unet_prior(folder: str | Path, unet, card: dict) -> Path:
    """Write a prior folder: config.json + safetensors weights (``save_pretrained``) and the model card."""
    from .card import write_model_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder, safe_serialization=True)
    share_as_umask(folder / WEIGHTS_NAME)
    write_model_card(folder, {**card, "architecture": card.get("architecture", "diffusers-unet2d"),
                              "weights": WEIGHTS_NAME})
    return folder
