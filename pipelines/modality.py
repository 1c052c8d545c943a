"""The modalities medrecon reconstructs, and what each one means for units when no prior says otherwise.

The core (``medrecon``) knows no modality: every modality-specific default lives here or in the solver
registry (``pipelines.registry``), and reaches the core as plain arguments.
"""
from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    ct = "ct"
    mri = "mri"


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
