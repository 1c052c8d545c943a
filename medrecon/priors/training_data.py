"""Training data for the priors: axial slices (whole-image priors) or volumes at their own pixel size (patch
priors) from the caller's volumes, mapped to [-1, 1] by the caller's intensity window (the core knows no
modality; ``medrecon train`` takes the window from pipelines.modality)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UnreadableError
from ..io.common import voxels_sha256, warn
from ..volume import PLANES, Volume
from .base import MODEL_RANGE, IntensityMap

log = logging.getLogger("medrecon")


@dataclass
class SliceData:
    """Training slices (N, 1, S, S) float32 in the model range [-1, 1] and what the card says about them."""

    slices: torch.Tensor
    modality: str
    intensity: dict
    pixel_spacing_mm: list | None = None
    description: dict = field(default_factory=dict)


def volume_names(description: dict | None) -> list[str]:
    """Each training volume as messages and checkpoints name it: its recorded path (``description['volumes']``,
    a card's data record), else 'volume k' (counted from 1); [] where the record keeps no list (in-memory volumes)."""
    vols = (description or {}).get("volumes")
    if not isinstance(vols, list):
        return []
    return [v.get("path", f"volume {k + 1}") if isinstance(v, dict) else str(v) for k, v in enumerate(vols)]


def volume_name(names: list, k: int) -> str:
    """Volume ``k`` (from 0) of ``names`` (``volume_names``), 'volume k+1' beyond them."""
    return names[k] if k < len(names) else f"volume {k + 1}"


def read_training_volume(path: Path, series: str | None = None) -> Volume:
    """One training volume (DICOM series folder or file, NIfTI, NRRD/MetaImage, .npy) via medrecon.io;
    ``series``: the SeriesInstanceUID to read from a folder holding several (default: the largest)."""
    from ..io import read_volume

    return read_volume(path, series=series)


def _folder_series(found: Path, series) -> list:
    """The series to read from ``found``: those of ``series`` (SeriesInstanceUIDs) it holds itself, else [None]
    (medrecon.io's default: its only or largest series; equal largest ones are an error naming them)."""
    if not series or not found.is_dir():
        return [None]
    from ..io.dicom_scan import list_series

    held = {s.uid for s in list_series(found)}
    return [uid for uid in series if uid in held] or [None]


def _reading_plan(paths, series) -> list:
    """(index of the path, volume path, series UID or None) of every volume to read; a UID of ``series`` that no
    DICOM folder under ``paths`` holds is an InputError, before anything is read."""
    plan = [(i, found, uid) for i, path in enumerate(paths) for found in found_volumes([path])
            for uid in _folder_series(found, series)]
    missing = [uid for uid in series or [] if uid not in {u for _, _, u in plan}]
    if missing:
        raise InputError(f"--series {missing[0]}: no DICOM folder under {', '.join(map(str, paths))} holds this "
                         "series; `medrecon info FOLDER` lists a folder's series")
    return plan


def training_intensity(intensity: dict) -> dict:
    """The caller's intensity section (physical window, unit, notes) on the training model range [-1, 1]."""
    lo, hi = MODEL_RANGE
    checked = IntensityMap.from_dict({**intensity, "model_min": lo, "model_max": hi})  # a usable window, or raises
    return {**intensity, "physical_min": checked.physical_min, "physical_max": checked.physical_max,
            "model_min": lo, "model_max": hi}


def square_resize(x: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """Centre crop (N, 1, H, W) to a square, resize to size; returns the images and the zoom (in px / out px)."""
    h, w = x.shape[-2:]
    m = min(h, w)
    x = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if m != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=m > size)
    return x, m / size


def model_slices(volume, to_model: IntensityMap, magnitude_percentile: float | None = None) -> torch.Tensor:
    """A Volume or (Z, Y, X) array in physical units as (Z, 1, Y, X) slices in model units, clamped to the
    map's model range; ``magnitude_percentile``: |v| / its percentile first (MRI magnitude)."""
    data = np.asarray(volume.data if isinstance(volume, Volume) else volume, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"training volumes must be (Z, Y, X) arrays or Volumes, got shape {data.shape}")
    if magnitude_percentile is not None:
        data = np.abs(data)
        data = data / max(float(np.percentile(data, magnitude_percentile)), 1e-12)
    x = torch.from_numpy(to_model.to_model(data))
    return x.clamp(to_model.model_min, to_model.model_max)[:, None]


def prepare_slices(volumes, intensity: dict, image_size: int = 64, *, magnitude_percentile: float | None = None,
                   modality: str | None = None, min_std: float = 1e-3, sources=None) -> SliceData:
    """Axial slices of ``volumes`` (Volume objects or (Z, Y, X) arrays in physical units) as training data.

    ``intensity``: the caller's physical window {physical_min, physical_max, unit, ...} (the core knows no
    modality: e.g. CT HU -1000..1000, MRI normalised magnitude 0..1), mapped to [-1, 1].
    ``magnitude_percentile`` (MRI): each volume becomes |v| / its percentile first. ``modality`` is only
    recorded in the card. Slices that are nearly constant after the map (std < ``min_std``) are dropped.
    """
    imap = training_intensity(intensity)
    to_model = IntensityMap.from_dict(imap)
    out, spacings, kept = [], [], []
    for v in volumes:
        x = model_slices(v, to_model, magnitude_percentile)
        x, zoom = square_resize(x, image_size)
        x = x[x.flatten(1).std(dim=1) >= min_std]
        out.append(x)
        kept.append(int(x.shape[0]))
        if isinstance(v, Volume):
            spacings.append([v.spacing[0] * zoom, v.spacing[1] * zoom])
    slices = torch.cat(out) if out else torch.zeros(0, 1, image_size, image_size)
    if slices.shape[0] == 0:
        raise InputError("no usable training slices: the volumes are empty or constant in the intensity window")
    spacing = [round(float(s), 4) for s in np.median(np.array(spacings), axis=0)] if spacings else None
    desc = {"volumes": [str(s) if not isinstance(s, dict) else s for s in sources] if sources
            else f"{len(kept)} in-memory volumes",
            "n_volumes": len(kept), "n_slices": int(slices.shape[0]), "slices_per_volume": kept}
    return SliceData(slices.contiguous(), modality, imap, spacing, desc)


def found_volumes(paths) -> list[Path]:
    from ..io.discovery import find_volume_paths

    found = find_volume_paths(paths)
    if not found:
        raise InputError(f"no volumes (DICOM series, NIfTI, NRRD) found under {', '.join(map(str, paths))}")
    return found


def pixel_spacing_record(vol: Volume) -> list:
    """A volume's in-plane pixel size (x, y) mm as the card records it."""
    return [round(float(vol.spacing[0]), 4), round(float(vol.spacing[1]), 4)]


def volume_record(found: Path, vol: Volume) -> dict:
    """What the card records of a training volume of the user's own: its absolute path (links resolved), the
    SHA-256 of its voxels and its in-plane pixel size (x, y) mm."""
    record = {"path": str(Path(found).resolve()), "voxels_sha256": voxels_sha256(vol),
              "pixel_spacing_mm": pixel_spacing_record(vol)}
    if vol.meta.get("series_uid") is not None:  # DICOM: which series of the folder
        record["series_uid"] = str(vol.meta["series_uid"])
    return record


def read_volumes(paths, sources=None, check=None, series=None, *, registered_voxels: bool = True
                 ) -> tuple[list[Volume], list, list]:
    """The volumes under each of ``paths`` (files or folders, searched recursively), read, what the card
    records for each: ``sources[i]`` where it is a registered scan's provenance record (with its voxels' SHA-256
    added where ``registered_voxels``: only the held-out overlap check uses it, so train passes False without
    held-out data and each registered scan's voxels are not hashed), else ``volume_record`` (absolute path, voxels' SHA-256, pixel size, DICOM series), and the volumes
    skipped. ``check(path, volume)``,
    from the pipelines, raises for a volume that is not of the prior's modality, or returns a warning about it (a
    copy of a held-out scan, say), which is logged and kept in its record as ``warning``. ``series``:
    SeriesInstanceUIDs; a DICOM folder holding any of them gives those (each its own volume), another its only or
    largest series. A volume found in a folder that holds no readable image (damaged files: UnreadableError) is
    skipped with a warning, which the third list keeps; a volume named itself (a file, a series folder given as
    such, a UID of ``series``), nothing readable at all, or a series no installed decoder reads (an InputError:
    the files may be whole), is an error."""
    volumes, recorded, skipped, first = [], [], [], None
    plan = _reading_plan(paths, series)
    for i, found, uid in plan:
        given = sources[i] if sources is not None else None
        try:
            vol = read_training_volume(found, uid)
        except UnreadableError as e:
            if sum(j == i for j, _, _ in plan) == 1 or (series and uid in series):
                raise  # the volume the user named (a file, a series folder, a --series UID) is not passed over
            first = first or e
            warn(skipped, f"skipped {found}: {e}")
            continue
        said = check(found, vol) if check is not None else None
        if said:
            log.warning(f"{found}: {said}")
        volumes.append(vol)
        # a registered scan's provenance record gets its voxels' SHA-256 as one's own volume's record has it (the
        # same scan held out and trained on, one a copy of the other, is refused by the voxels; train --heldout-data)
        record = ({**given, "voxels_sha256": voxels_sha256(vol)} if registered_voxels else dict(given)) \
            if isinstance(given, dict) else volume_record(found, vol)
        recorded.append({**record, "warning": said} if said else record)
    if not volumes:
        raise first
    return volumes, recorded, skipped


def _with_skipped(data, skipped: list):
    """``data`` (SliceData or PatchData) with the volumes ``read_volumes`` skipped in its card record."""
    if skipped:
        data.description["skipped"] = skipped
    return data


def load_slices(paths, intensity: dict, image_size: int = 64, *, sources=None, modality: str | None = None,
                check=None, series=None, registered_voxels: bool = True, **kw) -> SliceData:
    """Find, read and prepare the volumes under ``paths`` (files or folders) for a whole-slice prior.
    ``sources``, ``check``, ``series``, ``registered_voxels``: see ``read_volumes``."""
    volumes, recorded, skipped = read_volumes(paths, sources, check, series, registered_voxels=registered_voxels)
    return _with_skipped(prepare_slices(volumes, intensity, image_size, sources=recorded, modality=modality, **kw),
                         skipped)


#: ``planes="all"``: a training volume whose voxel sizes differ by at most this factor gives coronal and sagittal
#: slices too (a 3D acquisition); thicker slices would be stretched in those planes
RESLICE_MAX_ANISOTROPY = 1.5


def in_all_planes(volumes, recorded, fits=None) -> tuple[list[Volume], list]:
    """Each near-isotropic volume of ``volumes`` (``RESLICE_MAX_ANISOTROPY``) as axial, coronal and sagittal
    slices (``Volume.in_plane``, no interpolation), the others as stored; the records say which plane each is.
    ``fits(volume)``: False for a coronal or sagittal one left out (too few slices to hold a training patch)."""
    out, records = [], []
    for vol, rec in zip(volumes, recorded):
        isotropic = max(vol.spacing) <= RESLICE_MAX_ANISOTROPY * min(vol.spacing)
        for plane in PLANES if isotropic else ("as stored",):
            view = vol.in_plane(plane) if isotropic else vol
            if plane in PLANES[1:] and fits is not None and not fits(view):
                continue
            out.append(view)
            own = {"pixel_spacing_mm": pixel_spacing_record(view)} if "pixel_spacing_mm" in rec else {}
            records.append({**rec, **own, "plane": plane})  # read_volumes' records are dicts
    return out, records


def load_patch_data(paths, intensity: dict, *, sources=None, modality: str | None = None, check=None, series=None,
                    planes: str = "axial", fits=None, registered_voxels: bool = True, **kw):
    """Find, read and prepare the volumes under ``paths`` for a patch prior (kept at their own pixel size).
    ``sources``, ``check``, ``series``, ``registered_voxels``: see ``read_volumes``; ``planes``: 'axial' (the
    slices as stored) or 'all' (``in_all_planes`` with ``fits``)."""
    from .patch import prepare_volumes

    volumes, recorded, skipped = read_volumes(paths, sources, check, series, registered_voxels=registered_voxels)
    if planes == "all":
        volumes, recorded = in_all_planes(volumes, recorded, fits)
    elif planes != "axial":
        raise InputError(f"--planes {planes}: give 'axial' or 'all'")
    return _with_skipped(prepare_volumes(volumes, training_intensity(intensity), model_range=MODEL_RANGE,
                                         sources=recorded, modality=modality, **kw), skipped)


# ---- training ---------------------------------------------------------------------------------------------
