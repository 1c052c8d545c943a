"""The modalities medrecon reconstructs, and what each one means for units when no prior says otherwise.

The core (``medrecon``) knows no modality: every modality-specific default lives here or in the solver
registry (``pipelines.registry``), and reaches the core as plain arguments.
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class Modality(str, Enum):
    ct = "ct"
    mri = "mri"


def modality_name(text):
    """'ct' or 'mri' for a modality written in any case ('CT', ' Mri ': a config file, a measurements file); anything
    else as given, for the caller to refuse in its own words."""
    name = text.strip().lower() if isinstance(text, str) else text
    return name if name in {m.value for m in Modality} else text


#: physical window mapped onto the model range (``medrecon.priors.MODEL_RANGE``, [-1, 1]) when no prior brings its
#: own intensity map:
#: (physical_min, physical_max, unit)
INTENSITY_WINDOWS = {Modality.ct: (-1000.0, 1000.0, "HU"), Modality.mri: (0.0, 1.0, "normalised magnitude")}

#: the DICOM Modality value of each
DICOM_MODALITY = {Modality.ct: "CT", Modality.mri: "MR"}
#: and back: a DICOM Modality value -> medrecon's modality name
MODALITY_OF_DICOM = {tag: m.value for m, tag in DICOM_MODALITY.items()}


def intensity_card(modality: str | Modality) -> dict:
    """The default intensity map of a modality as a model-card ``intensity`` section."""
    from medrecon.priors import MODEL_RANGE

    lo, hi, unit = INTENSITY_WINDOWS[Modality(modality)]
    return {"physical_min": lo, "physical_max": hi, "model_min": MODEL_RANGE[0], "model_max": MODEL_RANGE[1],
            "unit": unit}


CT_HU_BELOW = -50.0  # a CT volume in HU has values below this (air, lung or fat), even inside the body
MR_NEGATIVE_FRACTION = 0.05  # MR magnitudes are not negative: a volume reaching below -5 % of its top is not one


#: what to do about values of the other modality, said by reconstruct (a config) and by train (an option)
CONFIG_FIX = {Modality.ct: "use an MRI config", Modality.mri: "use a CT config for CT in HU"}
TRAIN_FIX = {Modality.ct: "train with --modality mri", Modality.mri: "train CT in HU with --modality ct"}


def value_problem(vol, modality: str | Modality, where, fix: dict = CONFIG_FIX) -> str | None:
    """Why a volume's values are not the modality's (one value throughout in either: nothing to reconstruct; CT in
    HU has air, lung or fat; MR magnitudes are not negative), or None; ``fix``: what to do, by modality. A CT DICOM series with its
    rescale tags holds HU by definition (a small field of view may hold no air)."""
    modality = Modality(modality)
    if float(np.ptp(vol.data)) == 0:  # MR: reconstruct would divide it by its 99.9th percentile (0: by 1)
        value = float(vol.data.flat[0])
        return (f"{where}: every voxel is {value:.4g} HU: an image with no anatomy (all air or blank), nothing to "
                "reconstruct; give a CT volume that holds the scan (an empty or blank export?)"
                if modality == Modality.ct else
                f"{where}: every voxel is {value:.4g}: an image with no signal, nothing to normalise or reconstruct; "
                "give an MR magnitude volume (an empty or blank export?)")
    tag = str((vol.meta.get("dicom") or {}).get("Modality", "") or "").upper()
    if modality == Modality.ct and not (tag == "CT" and not vol.meta.get("rescale_assumed")):
        lo = float(np.percentile(vol.data, 0.5))
        if lo > CT_HU_BELOW:  # no air, lung or fat: MR magnitude or attenuation values, not HU
            return (f"{where}: values from {lo:.4g} up do not look like CT in HU (air is -1000 HU, fat -100): convert "
                    f"the volume to HU, or {fix[modality]}")
    if modality == Modality.mri:  # DICOM MR too: a phase, real or imaginary image is not a magnitude
        lo, hi = (float(v) for v in np.percentile(vol.data, [0.5, 99.5]))
        if lo < -MR_NEGATIVE_FRACTION * max(abs(hi), 1e-12):  # e.g. CT in HU: air at -1000
            return (f"{where}: values down to {lo:.4g} (0.5th percentile; 99.5th {hi:.4g}) do not look like MR "
                    f"magnitudes, which are not negative: {fix[modality]}, or give the magnitude of MR images")
    return None


def training_volume_check(modality: str | Modality):
    """``check(path, volume)`` for ``medrecon train``: refuses a volume that is not of the prior's modality, by its
    DICOM Modality (another modality, or none medrecon reconstructs: PT, NM, US, ...) or by its values, as
    reconstruct's domain check does."""
    modality = Modality(modality)

    def check(path, vol) -> None:
        from medrecon import InputError

        tag = str((vol.meta.get("dicom") or {}).get("Modality", "") or "").upper()
        if tag not in ("", "OT", DICOM_MODALITY[modality]):  # OT (a converted volume, no modality): its values say
            raise InputError(f"{path}: its DICOM Modality is {tag}, but the prior is for {modality.value}: train one "
                             "modality per prior (leave this volume out, or set --modality ct|mri)")
        why = value_problem(vol, modality, path, TRAIN_FIX)
        if why:
            raise InputError(why)
    return check
