"""``load_prior``: recognise a prior by its content, build the network, check the weights, wrap it as a Denoiser.

Recognised inputs
-----------------
* a folder with ``model_card.yaml``: medrecon's own format (diffusers UNet2DModel + safetensors): a
  whole-slice EDMPrior (``architecture: diffusers-unet2d``) or a position-aware PatchPrior of any slice
  size (``architecture: diffusers-unet2d-patch``, patch.py); or a card naming a public checkpoint file
  (``weights:``) with its config and intensity mapping;
* a score_sde checkpoint file (a dict with ``model`` and ``ema``): NCSN++, VE, continuous; EMA applied;
* a guided-diffusion state dict file (keys like ``input_blocks.0.0.weight``): ADM, VP, learned sigma.
  Its size config is read from the tensor shapes; the image size comes from a card when it cannot be.
A file may also have a ``model_card.yaml`` beside it whose ``weights`` names it, or get a card passed in.

Safety: files are read with ``torch.load(weights_only=True)`` (tensors and plain containers only). A file
that needs full pickle is refused unless ``allow_unsafe_pickle=True``: unpickling can run arbitrary code,
so only do that for files from a source you trust.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from ..device import resolve_device
from ..bundled import PREFIX as BUNDLED_PREFIX, bundled_prior_path
from ..errors import InputError
from ..io import is_volume_file
from .adm import DEFAULT_CHANNEL_MULT, ADMUNet, adm_config, adm_config_from_state_dict
from .base import Denoiser, IntensityMap, schedule_from_dict
from .card import CARD_NAME, default_card, merge_cards, read_model_card
from .ncsnpp import NCSNpp, ncsnpp_config, ncsnpp_state_from_checkpoint
from .network import EDMPrior, VEScorePrior, VPEpsPrior
from .patch import ARCHITECTURE as PATCH_ARCHITECTURE
from .patch import patch_prior_from_card
from .unet import CONFIG_NAME, EDM_SCHEDULE, WEIGHTS_NAME, build_unet, read_unet_config


def _abbrev(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... (+{len(names) - n} more)" if len(names) > n else "")


def check_readable(path: Path) -> None:
    """An InputError when this user may not read ``path`` (safetensors reports that as 'No such file or
    directory', which read as a damaged file)."""
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied: this user may not read the weights; ask the owner to make "
                         f"the file readable (chmod a+r {path}) or copy the prior somewhere you can read it")


def torch_load(path: Path, allow_unsafe_pickle: bool = False):
    """torch.load with weights_only=True; clear InputErrors for corrupt files and files that need pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if not found:  # bytes that are no pickle at all (torch also says "Weights only load failed" then)
            raise InputError(f"{path}: cannot read the checkpoint (not a valid torch file); the file is truncated "
                             "or corrupt: copy or download it again") from None
        if not allow_unsafe_pickle:
            what = f" ({found.group(1)})"
            raise InputError(
                f"{path}: this checkpoint needs code to load: it holds Python objects{what} that only full "
                "unpickling can build, and unpickling can run arbitrary code, so medrecon refuses it. If and only if "
                "you trust the file's source, load it in Python with medrecon.priors.load_prior(path, "
                "allow_unsafe_pickle=True), or better re-save its tensors with torch.save(state_dict) and use "
                "that file.") from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # zip/miniz errors, EOF, garbage bytes
        msg = re.split(r"(?<=\.)\s", str(e).splitlines()[0])[0] if str(e) else type(e).__name__  # its first sentence
        raise InputError(f"{path}: cannot read the checkpoint ({msg[:300]}); the file is truncated or corrupt: "
                         "copy or download it again") from None


def load_checked(network: torch.nn.Module, state: dict, path: Path, what: str,
                 config_from: str = CARD_NAME) -> torch.nn.Module:
    """Load ``state`` into ``network`` (built on the meta device) after checking keys, shapes and finiteness.
    ``config_from``: the file the network's shapes came from, named in the error message."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"{path}: the weights do not fit {what}: {len(missing)} missing keys [{_abbrev(missing)}] and "
            f"{len(unexpected)} unexpected keys [{_abbrev(unexpected)}]. Wrong file, or the model card's "
            f"architecture/config does not describe this checkpoint: fix {CARD_NAME}.")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise InputError(f"{path}: {len(wrong)} tensors have other shapes than {what} expects (file vs network): "
                         f"[{_abbrev(wrong, 3)}]. Fix the config in {config_from} or use the weights it was written "
                         "with.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{path}: {len(bad)} weight tensors contain NaN or Inf [{_abbrev(bad)}]: the file is "
                         "damaged or training diverged; use another checkpoint.")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    network.load_state_dict(state, strict=True, assign=True)
    return network.eval()


def _on_meta(build, *args):
    with torch.device("meta"):
        return build(*args)


def _detect(obj) -> str | None:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "ema" in obj:
        return "ncsnpp"
    if isinstance(obj, dict) and any(str(k).split(".", 1)[-1].startswith("input_blocks.0.0.") or
                                     str(k).startswith("input_blocks.0.0.") for k in obj):
        return "adm"
    return None


def _card_beside(path: Path) -> dict | None:
    """A model_card.yaml in the file's folder whose ``weights`` names this file."""
    cp = path.parent / CARD_NAME
    if cp.is_file():
        card = read_model_card(cp)
        if Path(str(card.get("weights", ""))).name == path.name:
            return card
    return None


def _build_ncsnpp(obj, card: dict, given: dict, path: Path, use_ema: bool) -> VEScorePrior:
    """``card``: defaults merged with ``given`` (the user's card, whose schedule wins if it has one)."""
    try:
        cfg = ncsnpp_config(card.get("config"))
    except ValueError as e:
        raise InputError(f"{path}: {e}; fix config in {CARD_NAME}") from None
    net = _on_meta(NCSNpp, cfg)
    try:
        state = ncsnpp_state_from_checkpoint(obj, net, use_ema=use_ema)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: score_sde checkpoint does not fit NCSN++ (nf={cfg['nf']}, ch_mult="
                         f"{cfg['ch_mult']}, num_res_blocks={cfg['num_res_blocks']}): {e}. "
                         f"Give the right config in {CARD_NAME}.") from None
    what = f"NCSN++ (nf={cfg['nf']}, ch_mult={cfg['ch_mult']}, num_res_blocks={cfg['num_res_blocks']})"
    net = load_checked(net, state, path, what)
    sched = given.get("schedule") or {"type": "ve", "sigma_min": cfg["sigma_min"], "sigma_max": cfg["sigma_max"],
                                      "num_scales": cfg["num_scales"]}
    card = merge_cards(card, {"config": cfg, "image_size": cfg["image_size"], "schedule": sched,
                              "ema_applied": bool(obj.get("ema")) and use_ema, "checkpoint_step": obj.get("step")})
    return VEScorePrior(net, card, schedule_from_dict(sched), _intensity(card), cfg["image_size"], weights_path=path)


def _build_adm(state: dict, card: dict, given: dict, path: Path) -> VPEpsPrior:
    """Size config from the tensor shapes, completed/overridden by ``given`` (the user's card)."""
    state = {(k[len("module."):] if str(k).startswith("module.") else k): v for k, v in state.items()}
    try:
        inferred = adm_config_from_state_dict(state)
    except (KeyError, ValueError) as e:
        raise InputError(f"{path}: looks like a guided-diffusion state dict but its layout is not an ADM UNet "
                         f"(missing {e}); check the file") from None
    cfg = {**inferred, **(given.get("config") or {})}
    if cfg["in_channels"] != 1:
        raise InputError(f"{path}: this ADM takes {cfg['in_channels']} input channels (e.g. a complex image's real and "
                         "imaginary parts as two channels), while medrecon's samplers hand a prior one image channel "
                         "(complex images as two images of one batch): use a single-channel checkpoint")
    sizes = [size for size, mult in DEFAULT_CHANNEL_MULT.items() if mult == inferred["channel_mult"]]
    guessed = [] if given.get("image_size") or len(sizes) < 2 else [
        f"image_size: channel_mult {inferred['channel_mult']} is guided-diffusion's default for "
        f"{' and '.join(map(str, sizes))} pixels alike; {sizes[0]} assumed. Override in {CARD_NAME}."]
    cfg["image_size"] = given.get("image_size") or cfg["image_size"]
    if cfg["image_size"] is None:
        raise InputError(f"{path}: cannot tell the image size this ADM was trained at (channel_mult "
                         f"{inferred['channel_mult']} has no guided-diffusion default). Write a {CARD_NAME} beside "
                         "it with `weights: <file name>`, `architecture: adm` and `image_size: <size>`.")
    try:
        cfg = adm_config(cfg)
    except ValueError as e:
        raise InputError(f"{path}: {e}; fix config in {CARD_NAME}") from None
    what = (f"ADM (model_channels={cfg['model_channels']}, channel_mult={cfg['channel_mult']}, "
            f"num_res_blocks={cfg['num_res_blocks']})")
    net = load_checked(_on_meta(ADMUNet, cfg), state, path, what)
    card = merge_cards(card, {"config": cfg, "image_size": cfg["image_size"],
                              "assumptions": list(card.get("assumptions") or []) + guessed})
    return VPEpsPrior(net, card, schedule_from_dict(card["schedule"]), _intensity(card), cfg["image_size"],
                      weights_path=path)


def _build_unet(folder: Path, card: dict) -> EDMPrior:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = folder / card.get("weights", WEIGHTS_NAME)
    for f in (folder / CONFIG_NAME, weights):
        if not f.is_file():
            raise InputError(f"{f}: missing; a medrecon prior folder holds {CARD_NAME}, {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME} (as written by `medrecon train`)")
    check_readable(weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{weights}: cannot read the weights ({e}); the file is truncated or corrupt") from None
    try:
        net = _on_meta(build_unet, read_unet_config(folder))
    except (ValueError, TypeError) as e:
        raise InputError(f"{folder / CONFIG_NAME}: not a usable UNet2DModel config ({e})") from None
    net = load_checked(net, state, weights, "the UNet2DModel of config.json", config_from=str(folder / CONFIG_NAME))
    sigma_data = float(card.get("config", {}).get("sigma_data", 0.5))
    sched = schedule_from_dict(card.get("schedule") or EDM_SCHEDULE)
    if card.get("architecture") == PATCH_ARCHITECTURE:
        k = int((card.get("patch") or {}).get("context_slices", 0))
        if net.config.in_channels != 3 + 2 * k:
            raise InputError(f"{folder / CONFIG_NAME}: a patch prior's network takes {3 + 2 * k} input channels "
                             f"(image, x, y{f', {2 * k} neighbouring slices' if k else ''}; patch.context_slices "
                             f"{k}), this one {net.config.in_channels}; fix the architecture in {CARD_NAME}")
        return patch_prior_from_card(net, card, sched, _intensity(card), weights_path=weights)
    if net.config.in_channels != 1:  # position channels: a patch prior's network under a whole-slice card
        raise InputError(f"{folder / CONFIG_NAME}: a whole-slice prior's network takes 1 input channel, this one "
                         f"{net.config.in_channels} (a patch prior's?); fix the architecture in {CARD_NAME} "
                         f"({PATCH_ARCHITECTURE} for a patch prior)")
    return EDMPrior(net, card, sched, _intensity(card), card.get("image_size") or net.config.sample_size,
                    weights_path=weights, sigma_data=sigma_data)


def _target_device(device) -> torch.device:
    """None: the CPU; otherwise medrecon.device.resolve_device ('auto', 'cpu', 'cuda', 'cuda:N', torch.device)."""
    return torch.device("cpu") if device is None else resolve_device(device)


def _intensity(card: dict) -> IntensityMap | None:
    d = card.get("intensity")
    return IntensityMap.from_dict(d, f"{card.get('name', 'the prior')}'s {CARD_NAME}") if d else None


def load_prior(path: str | Path, device=None, allow_unsafe_pickle: bool = False, card: dict | str | Path | None = None,
               use_ema: bool = True, defaults: dict | None = None) -> Denoiser:
    """Load a prior from a folder (with model_card.yaml) or a public checkpoint file; see the module docstring.

    ``card`` (a dict or a YAML path) overrides/completes the card found with the weights. ``defaults``:
    cards by public architecture ({'ncsnpp': {...}, 'adm': {...}}) for what a public checkpoint's weights
    cannot tell (modality, intensity map, pixel size, provenance); they lie under the card found or given,
    which wins key by key (the core itself only knows the formats' network defaults, ``card.ARCH_DEFAULTS``;
    pipelines.prior_cards has the AAPM CT cards). ``use_ema=False`` loads a score_sde checkpoint's raw
    ``model`` weights instead of the EMA ones (for diagnosis only). ``device``: None (CPU), "cpu", "cuda",
    "cuda:N", "auto" (CUDA when available) or a torch.device (medrecon.device.resolve_device).
    """
    path = bundled_prior_path(path) if str(path).startswith(BUNDLED_PREFIX) else Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give a prior folder with {CARD_NAME}, a checkpoint file "
                         f"or {BUNDLED_PREFIX}NAME)")
    user = (read_model_card(card) if isinstance(card, (str, Path)) else dict(card)) if card is not None else {}
    if path.is_dir():
        found = merge_cards(read_model_card(path), user)
        if not isinstance(found.get("weights", ""), str):
            raise InputError(f"{path / CARD_NAME}: weights: give the weights file's name, e.g. {WEIGHTS_NAME}")
        weights = path / found["weights"] if found.get("weights") else None
        if found.get("architecture") in ("diffusers-unet2d", PATCH_ARCHITECTURE) or \
                (weights is None and (path / CONFIG_NAME).is_file()):
            prior = _build_unet(path, found)
            return prior.to(_target_device(device))
        if weights is None:
            raise InputError(f"{path / CARD_NAME}: names no `weights:` file and the folder has no {CONFIG_NAME}")
    else:
        weights, found = path, merge_cards(_card_beside(path) or {}, user)
    if not weights.is_file():
        raise InputError(f"{weights}: weights file named by the model card does not exist")
    check_readable(weights)
    if is_volume_file(weights):  # a format read_volume reads
        raise InputError(f"{weights}: this is an image volume, not a prior; prior.path takes a prior folder (with "
                         f"{CARD_NAME}), a checkpoint file or {BUNDLED_PREFIX}NAME")
    obj = torch_load(weights, allow_unsafe_pickle)
    if isinstance(obj, dict) and "options" in obj and "unet_config" in obj:  # medrecon train's resumable state
        run = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
        raise InputError(f"{weights}: this is medrecon train's resumable state, not a prior; give the training "
                         f"run's output folder (prior.path={run}), which holds the prior it writes")
    arch = _detect(obj)
    if arch is None:
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{weights}: not a recognised prior checkpoint (expected a score_sde checkpoint with keys "
                         f"model/ema/optimizer/step, or a guided-diffusion state dict with keys like "
                         f"input_blocks.0.0.weight; found {keys})")
    if found.get("architecture") not in (None, arch):
        raise InputError(f"{weights}: the model card says architecture {found['architecture']!r} but the file is a "
                         f"{arch} checkpoint; fix {CARD_NAME}")
    full = merge_cards(merge_cards(default_card(arch), (defaults or {}).get(arch) or {}), found)
    if not found.get("weights"):
        full["weights"] = weights.name
    full.setdefault("name", weights.stem)
    if arch == "ncsnpp":
        prior = _build_ncsnpp(obj, full, found, weights, use_ema)
    else:
        prior = _build_adm(obj, full, found, weights)
    return prior.to(_target_device(device))


__all__ = ["load_prior", "torch_load", "load_checked"]
