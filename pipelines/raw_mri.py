"""Measured MRI raw data: fastMRI HDF5, ISMRMRD HDF5 (through the ``ismrmrd`` package) and BART .cfl k-space.

All return a ``Measurement`` with complex k-space (Z, [C,] H, W), the sampling mask, the reconstruction
grid from the ISMRMRD header (recon matrix and field of view: pixel spacing = FOV / matrix, slice spacing
= the recon FOV along z) and ``info['kspace_shape']`` when the encoded matrix is larger than the recon
matrix (readout oversampling: the operator crops, see ``operators.mri.crop``). Rows H are the readout
(ISMRMRD x), columns W the phase encoding (y), as fastMRI stores them. k-space is centred (index n // 2 is
DC, the ``fftc`` convention).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from medrecon.errors import InputError
from medrecon.io import read_cfl
from medrecon.volume import Volume
from operators.mri import mask_acceleration

from .measurement import Measurement, checked_reference, real_kspace_refusal, refuse_no_values, refuse_non_finite

MEASURED = "measured k-space, rescaled at load"


def is_measured_kspace(meas: Measurement) -> bool:
    """Whether ``meas`` is measured k-space read from a raw file (not a simulation)."""
    return meas.info.get("units", "") == MEASURED


def mask_used(meas: Measurement) -> dict | None:
    """report.json's ``measured_mask``: for measured k-space, where its own mask came from (``mask_source``: the
    file's, its non-zero columns or samples, the acquired lines), the acceleration of that mask and the one
    reconstructed (they differ after mri.retrospective, whose mask the config's ``mri.mask`` is); None otherwise."""
    if not is_measured_kspace(meas):
        return None
    used = mask_acceleration(meas.mask)
    return {"source": meas.info.get("mask_source"), "acceleration": round(used, 3),
            "file_acceleration": round(meas.info.get("acceleration_before_retrospective", used), 3)}


def parse_ismrmrd_header(xml: str | bytes) -> dict:
    """Encoded and recon matrix sizes and fields of view (mm) from an ISMRMRD XML header:
    {"encoded": {"matrix": [x, y, z], "fov_mm": [x, y, z]}, "recon": {...}, "ky_center": int | None,
    "trajectory": str | None}."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise InputError(f"ISMRMRD header: not valid XML ({e})") from None
    for el in root.iter():  # drop the namespace
        el.tag = el.tag.rsplit("}", 1)[-1]
    enc = root.find("encoding")
    if enc is None:
        raise InputError("ISMRMRD header: no <encoding> section")

    def space(name):
        sp = enc.find(name)
        try:
            return {"matrix": [int(sp.find(f"matrixSize/{a}").text) for a in "xyz"],
                    "fov_mm": [float(sp.find(f"fieldOfView_mm/{a}").text) for a in "xyz"]}
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"ISMRMRD header: <{name}> needs matrixSize and fieldOfView_mm x, y, z") from None
    centre = enc.find("encodingLimits/kspace_encoding_step_1/center")
    trajectory = enc.find("trajectory")
    return {"encoded": space("encodedSpace"), "recon": space("reconSpace"),
            "ky_center": None if centre is None else int(centre.text),
            "trajectory": None if trajectory is None else (trajectory.text or "").strip()}


def _grid(n_slices: int, kshape: tuple[int, int], header: dict | None) -> tuple[Volume, dict]:
    """The reconstruction grid and the info entries of the k-space/recon matrices."""
    if header is None:
        return Volume(np.zeros((n_slices, *kshape), np.float32)), {}
    rec = header["recon"]
    shape = (rec["matrix"][0], rec["matrix"][1])  # rows: readout x, columns: phase y
    if shape[0] > kshape[0] or shape[1] > kshape[1]:
        raise InputError(f"the recon matrix {shape[0]}x{shape[1]} of the header is larger than the k-space "
                         f"{kshape[0]}x{kshape[1]}")
    fov = rec["fov_mm"]
    spacing = (fov[1] / shape[1], fov[0] / shape[0], fov[2] if fov[2] > 0 else 1.0)  # (x, y, z) = (cols, rows, z)
    info = {"recon_fov_mm": fov, "encoded_matrix": header["encoded"]["matrix"]}
    enc = header["encoded"]
    coarse = [f"{axis} {e_fov / e_n:.3g} mm encoded against {r_fov / r_n:.3g} mm" for axis, e_fov, e_n, r_fov, r_n in
              zip("xy", enc["fov_mm"], enc["matrix"], fov, rec["matrix"]) if e_n and r_n and e_fov > 0 and r_fov > 0
              and abs((e_fov / e_n) / (r_fov / r_n) - 1) > 0.01]
    if coarse:  # an interpolated recon matrix: medrecon crops k-space to it, which assumes equal pixels
        info["warnings"] = [f"the header's recon pixel differs from its encoded pixel ({'; '.join(coarse)}): the "
                            "scanner interpolated its image, and medrecon's pixel size and crop assume the two equal; "
                            "check distances in the result against a known length"]
    if shape != kshape:
        info["kspace_shape"] = list(kshape)
    return Volume(np.zeros((n_slices, *shape), np.float32), spacing), info


def _one_or_per_slice(sampled: np.ndarray) -> np.ndarray:
    """Each slice's sampled positions (Z, ...), or the first slice's where every slice shares them (a union over
    slices would fit each slice's unacquired lines as measured zeros)."""
    return sampled[0] if (sampled == sampled[:1]).all() else sampled


TRANSPOSE = ("medrecon expects them along the last axis (columns W): transpose the last two axes of kspace (and of "
             "the reference)")


def _energy(k: np.ndarray, path: Path, axes: str = "") -> np.ndarray:
    """|k| summed over coils, (Z, H, W): the one pass over the whole k-space (Z, [C,] H, W) whose result the checks
    after it share. NaN or infinite samples, which make their pixel's sum NaN or infinite, are refused here
    (``refuse_non_finite``; ``axes`` names the order of its index)."""
    refuse_no_values(k, path)
    energy = np.abs(k).reshape(k.shape[0], -1, *k.shape[-2:]).sum(1)
    if not np.isfinite(energy).all():  # (a sum past float32's range alone is not refused there)
        refuse_non_finite(k, path, "mri", axes)
    return energy


def _held(meas: Measurement, energy: np.ndarray) -> Measurement:
    """``meas`` knowing whether its k-space holds a non-zero sample (``holds_data``) from ``energy`` (:func:`_energy`,
    zero where its data were left out), so that its check does not scan the k-space again."""
    meas.holds_data = bool(energy.any())
    return meas


def _mask(mask, k: np.ndarray, energy: np.ndarray, path: Path) -> np.ndarray:
    """The sampling mask, (H, W), or (Z, H, W) where the slices' lines differ: the file's own, (W,) per column or
    (H, W) / (Z, H, W) per sample (1 along an axis broadcasts), else refused naming the fix; none given: the
    non-zero columns (of ``energy``, :func:`_energy`)."""
    if mask is None:
        mask = _one_or_per_slice(energy.any(axis=1))  # (W,) or (Z, W)
        if mask.ndim == 2:
            return np.broadcast_to(mask[:, None, :], (k.shape[0], *k.shape[-2:])).astype(np.float32)
    mask = np.asarray(mask, np.float32)
    (h, w), ndim = k.shape[-2:], mask.ndim
    full = (k.shape[0], h, w)[-ndim:] if 1 <= ndim <= 3 else ()
    if not full or mask.shape[-1] != w or any(m not in (1, n) for m, n in zip(mask.shape, full)):
        what = f"has {mask.size} entries but kspace {k.shape} has {w} columns" if ndim == 1 else \
            f"of shape {mask.shape} does not fit kspace {k.shape}"
        fix = f"its phase-encode lines run along the rows (axis -2)? {TRANSPOSE}" if mask.shape[-1] == h != w else \
            f"store it as ({w},), one entry per phase-encode column, or as (H, W) = ({h}, {w}) or (slices, H, W) " \
            "per sample"
        raise InputError(f"{path}: mask {what}: {fix}")
    return np.broadcast_to(mask, full if ndim == 3 else (h, w)).copy()


def _columns_without_data(mask: np.ndarray, energy: np.ndarray) -> int:
    """How many phase-encode columns ``mask`` ((H, W) or (Z, H, W)) samples where a slice's k-space (its
    ``energy``, (Z, H, W): :func:`_energy`) holds only zeros between columns that hold data (zero columns at the
    edges are padding: fastMRI's knee files pad k-space to the matrix and may mark the padding sampled)."""
    sampled = np.broadcast_to((mask > 0).any(axis=-2), (energy.shape[0], energy.shape[-1]))  # (Z, W)
    held = energy.any(axis=1)
    inside = np.maximum.accumulate(held, axis=1) & np.maximum.accumulate(held[:, ::-1], axis=1)[:, ::-1]
    return int((sampled & ~held & inside).any(axis=0).sum())


#: field names of a compound (real, imaginary) k-space dataset; h5py itself reads only fields r and i as complex
COMPOUND_PARTS = (("real", "imag"), ("re", "im"), ("r", "i"))


def _complex_kspace(raw, path: Path) -> np.ndarray:
    """An HDF5 ``kspace`` dataset as complex64: complex, or a compound of a real and an imaginary field
    (``COMPOUND_PARTS``). Real values are refused: measured k-space is complex, so a real dataset lost its
    imaginary part, holds magnitudes, or holds the two parts along a last axis of 2 (torch's layout)."""
    names = {n.lower(): n for n in raw.dtype.names or ()}
    parts = next(((names[a], names[b]) for a, b in COMPOUND_PARTS if len(names) == 2 and {a, b} <= set(names)), None)
    if parts is not None:
        a = raw[()]
        return (a[parts[0]] + 1j * a[parts[1]]).astype(np.complex64)
    if names:
        raise InputError(f"{path}: kspace is a compound of fields {tuple(names.values())}: store it as complex, or "
                         "as a compound of the fields real and imag")
    if raw.dtype.kind != "c" and raw.shape[-1] == 2:  # torch's (..., 2) real/imaginary layout
        raise InputError(f"{path}: kspace is real with a last axis of 2 ({raw.shape}): real and imaginary "
                         "parts? store it as complex (k[..., 0] + 1j * k[..., 1])")
    if raw.dtype.kind != "c":
        raise real_kspace_refusal(path, raw.dtype)
    return np.asarray(raw[()]).astype(np.complex64)


def _refuse_uncentred(energy: np.ndarray, path: Path, file_axes=(-2, -1)) -> None:
    """Refuses k-space whose energy (|k| summed over slices and coils; ``energy`` (Z, H, W): :func:`_energy`) peaks
    in the outer eighth of the matrix along H or W: DC at index 0, numpy.fft's own convention, where medrecon
    expects it at n // 2 (the reconstruction is then garbage). Centred data peak at n // 2, a partial Fourier or
    asymmetric echo (zero-filled) a few samples off it, and one stored without its unmeasured part (5/8 of the
    lines) 0.3 n from the centre.
    ``file_axes``: the two axes as the file numbers them, for the fix."""
    energy = energy.sum(0)  # (H, W)
    if not energy.any():
        return
    peak = np.unravel_index(int(np.argmax(energy)), energy.shape)
    off = [ax for ax, i, n in zip(file_axes, peak, energy.shape) if n > 2 and min(i, n - 1 - i) < n / 8]
    if off:
        raise InputError(f"{path}: k-space looks uncentred: its energy peaks at {tuple(int(i) for i in peak)}, at the "
                         f"edge of the {energy.shape[0]} x {energy.shape[1]} matrix, not near its centre "
                         f"{tuple(n // 2 for n in energy.shape)} where medrecon expects DC; if DC is at index 0 "
                         f"(numpy.fft's convention), apply numpy.fft.fftshift(kspace, axes={tuple(off)})")


def _refuse_lines_along_rows(energy: np.ndarray, path: Path) -> None:
    """Refuses k-space (its ``energy`` (Z, H, W): :func:`_energy`) of which a slice has every column holding data
    but whole rows empty between rows holding data: undersampled phase-encode lines along the rows, which a mask of
    the non-zero columns calls fully sampled (its missing rows then fitted as measured zeros). Empty rows at the
    edges only are a partial echo or a zero-padded readout, and are read."""
    for rows, cols in zip(energy.any(axis=2), energy.any(axis=1)):
        inner = rows[np.argmax(rows): len(rows) - np.argmax(rows[::-1])]
        if cols.all() and not inner.all():
            raise InputError(f"{path}: {int((~inner).sum())} of its {len(rows)} rows are empty between rows holding "
                             "data, while every column holds data: its phase-encode lines run along the rows (axis "
                             f"-2); {TRANSPOSE}")


def load_fastmri(path: Path) -> Measurement:
    """fastMRI HDF5: ``kspace`` (slices, [coils,] H, W), optional ``mask`` (W,) or (H, W), ``ismrmrd_header``,
    ``reconstruction_rss`` (the reference magnitude; single-coil files: ``reconstruction_esc``, fastMRI's image of
    that k-space) and ``sens_maps``/``coil_maps`` (medrecon's own files)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise InputError(f"{path}: no 'kspace' dataset (fastMRI-style files hold kspace "
                                 f"(slices, [coils,] H, W))")
            if not isinstance(f["kspace"], h5py.Dataset):  # (a group: an AttributeError's traceback)
                raise InputError(f"{path}: 'kspace' is a group, not a dataset: fastMRI-style files hold kspace as one "
                                 "array (slices, [coils,] H, W)")
            k = _complex_kspace(f["kspace"], path)
            maps = next((np.asarray(f[n][()]).astype(np.complex64) for n in ("sens_maps", "coil_maps") if n in f),
                        None)
            mask = np.asarray(f["mask"][()]) if "mask" in f else None
            xml = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
            # single-coil files (kspace (slices, H, W)): fastMRI's reconstruction_rss is of the multi-coil data
            # they were emulated from; reconstruction_esc is the image of this k-space
            names = ("reconstruction_esc", "reconstruction_rss") if f["kspace"].ndim == 3 else ("reconstruction_rss",)
            name = next((n for n in names if n in f), None)
            ref = None if name is None else np.asarray(f[name][()])  # float32 once checked
    except OSError as e:
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None
    if k.ndim not in (3, 4):
        raise InputError(f"{path}: kspace must be (slices, [coils,] H, W), got shape {k.shape}")
    energy = _energy(k, path)  # NaN refused before the mask is inferred from it
    _refuse_uncentred(energy, path)
    header = None if xml is None else parse_ismrmrd_header(xml.tobytes() if hasattr(xml, "tobytes") else xml)
    grid, info = _grid(k.shape[0], k.shape[-2:], header)
    ref = checked_reference(ref, grid.shape, path, name)
    source = "file" if mask is not None else "non-zero columns"
    if mask is None:  # (ISMRMRD places each line at its own ky: never along the rows)
        _refuse_lines_along_rows(energy, path)
    mask = _mask(mask, k, energy, path)
    stale = _columns_without_data(mask, energy) if source == "file" else 0  # an inferred mask samples only held columns
    if stale:  # a mask of other data: those columns would be fitted as measured zeros, unsaid
        info["warnings"] = [*info.get("warnings", []), f"{path}: the mask samples {stale} columns that hold only "
                            "zeros (a mask of other data?): they are fitted as measured zeros; store the mask of the "
                            "lines acquired, or leave it out (the non-zero columns are then taken)"]
    return _held(Measurement("mri", _only_sampled(k, mask), grid, None, mask, maps,  # a file of full k-space and
                              {"source": str(path), "layout": "2d", "units": MEASURED, "mask_source": source, **info},
                              reference=ref), energy * (mask > 0))  # a mask: its lines


def _only_sampled(k: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """k-space (Z, [C,] H, W) with the samples ``mask`` ((H, W) or (Z, H, W)) leaves out set to 0 (the
    cross-validation tells the sampled lines by y != 0)."""
    sampled = (mask > 0).reshape(mask.shape[0] if mask.ndim == 3 else 1, *([1] * (k.ndim - 3)), *mask.shape[-2:])
    return np.where(sampled, k, 0).astype(np.complex64)


def undersampled(meas: Measurement, lines: np.ndarray, how: str) -> Measurement:
    """Measured k-space with only the phase-encode columns ``lines`` (broadcastable to (H, W): a config's mask)
    kept, the file's own mask staying in force (a partial echo's unmeasured samples): a fully sampled file (fastMRI's
    train and val files) undersampled retrospectively; ``how`` is recorded. Its reference, the image of the full
    k-space, is kept, and so is the file's own acceleration (``acceleration_before_retrospective``)."""
    mask = np.asarray(meas.mask, np.float32) * np.broadcast_to(np.asarray(lines, np.float32), meas.mask.shape[-2:])
    return replace(meas, data=_only_sampled(np.asarray(meas.data), mask), mask=mask,
                   info={**meas.info, "retrospective_mask": how,
                         "acceleration_before_retrospective": mask_acceleration(meas.mask)})


def is_ismrmrd(path: Path) -> bool:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "dataset" in f and "data" in f["dataset"] and "xml" in f["dataset"]
    except OSError:
        return False


#: ISMRMRD acquisition flags of lines that are not image k-space (skipped)
NOT_IMAGE_LINES = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_PHASECORR_DATA", "ACQ_IS_NAVIGATION_DATA",
                   "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_DUMMYSCAN_DATA",
                   "ACQ_IS_PHASE_STABILIZATION", "ACQ_IS_PHASE_STABILIZATION_REFERENCE",
                   "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA")


def load_ismrmrd(path: Path) -> Measurement:
    """ISMRMRD raw data (Cartesian, 2D multi-slice): acquisitions placed by slice and phase-encode index, lines
    that are not image k-space (noise, phase correction, navigators, ...) skipped, repeated lines (averages)
    averaged; several echoes, repetitions, sets, cardiac phases or 3D partitions are refused. ky is centred with
    the header's encoding limits."""
    try:
        import ismrmrd
    except ImportError:
        raise InputError(f"{path}: ISMRMRD raw data need the ismrmrd package (pip install 'medrecon[mri]')") \
            from None
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        header = parse_ismrmrd_header(dset.read_xml_header())
        n_ky = header["encoded"]["matrix"][1]
        centre = header["ky_center"] if header["ky_center"] is not None else n_ky // 2
        acqs = [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]
    finally:
        dset.close()
    not_image = [getattr(ismrmrd, f) for f in NOT_IMAGE_LINES if hasattr(ismrmrd, f)]
    acqs = [a for a in acqs if not any(a.is_flag_set(f) for f in not_image)]
    if not acqs:
        raise InputError(f"{path}: no imaging acquisitions")
    if header["trajectory"] not in (None, "cartesian") or any(a.trajectory_dimensions for a in acqs):
        raise InputError(f"{path}: the k-space trajectory is {header['trajectory'] or 'given per sample'}: medrecon "
                         "reads Cartesian k-space; grid it onto a Cartesian matrix first (e.g. BART's nufft)")
    for what in ("contrast", "repetition", "set", "phase", "kspace_encode_step_2"):
        seen = sorted({int(getattr(a.idx, what)) for a in acqs})
        if len(seen) > 1:  # lines of several images would overwrite one another
            raise InputError(f"{path}: the acquisitions span idx.{what} {seen[:6]}: medrecon reads one 2D multi-slice "
                             "image (one echo, repetition, set and cardiac phase; no 3D partitions); extract one "
                             "first (e.g. with ismrmrd's Python API)")
    n_slices = 1 + max(a.idx.slice for a in acqs)
    n_coils, n_samples = acqs[0].data.shape
    n_ro, first = _readout(path, acqs, n_samples, header["encoded"]["matrix"][0])
    k = np.zeros((n_slices, n_coils, n_ro, n_ky), np.complex64)
    count = np.zeros((n_slices, n_ky), np.int64)
    for a in acqs:
        ky = a.idx.kspace_encode_step_1 - centre + n_ky // 2
        if not 0 <= ky < n_ky or a.data.shape != (n_coils, n_samples):
            raise InputError(f"{path}: acquisition at ky {a.idx.kspace_encode_step_1} does not fit the "
                             f"encoded matrix ({n_coils} coils x {n_samples} samples x {n_ky} lines)")
        k[a.idx.slice, :, first:first + n_samples, ky] += a.data
        count[a.idx.slice, ky] += 1
    k /= np.maximum(count, 1)[:, None, None, :]  # repeated lines (averages) are averaged
    energy = _energy(k, path, axes="(idx.slice, coil, readout sample, ky)")
    order, step = _slice_positions(path, acqs, n_slices)
    k, energy = k[order], energy[order]
    mask = _mask(None, k, energy, path)
    mask[..., :first, :], mask[..., first + n_samples:, :] = 0, 0  # a partial echo's unmeasured readout samples
    grid, info = _grid(n_slices, (n_ro, n_ky), header)
    if step is not None:  # the slices' own spacing, gaps included (the header's FOV z is a slice's thickness)
        grid = replace(grid, spacing=(*grid.spacing[:2], step))
        info["slice_spacing_mm"] = step
    return _held(Measurement("mri", k if n_coils > 1 else k[:, 0], grid, None, mask, None,
                              {"source": str(path), "layout": "2d", "units": MEASURED, "mask_source": "acquired lines",
                               **info}), energy)


def _slice_positions(path: Path, acqs, n_slices: int) -> tuple[np.ndarray, float | None]:
    """(slice order along the slice direction, spacing of the slice centres in mm) from the acquisitions'
    ``position`` and ``slice_dir``; (identity, None) for one slice or where the writer set no positions."""
    identity = np.arange(n_slices)
    if n_slices < 2:
        return identity, None
    normal = np.asarray(acqs[0].slice_dir, float)
    if np.linalg.norm(normal) < 1e-6:
        return identity, None
    normal /= np.linalg.norm(normal)
    where: dict[int, float] = {}
    for a in acqs:
        where.setdefault(int(a.idx.slice), float(np.dot(np.asarray(a.position, float), normal)))
    if len(where) < n_slices or len(set(where.values())) < 2:
        return identity, None
    z = np.array([where[s] for s in range(n_slices)])
    order = np.argsort(z, kind="stable")
    gaps = np.diff(z[order])
    if gaps.min() < 1e-3 or gaps.max() - gaps.min() > max(0.2, 0.01 * np.median(gaps)):
        raise InputError(f"{path}: the slices' positions along slice_dir are not evenly spaced (gaps "
                         f"{gaps.min():.3g} to {gaps.max():.3g} mm): read slices of one stack at a time")
    return order, float(np.median(gaps))


def _readout(path: Path, acqs, n_samples: int, n_encoded: int) -> tuple[int, int]:
    """(readout length, index of the first sample) that put every line's echo (``center_sample``) at the
    readout's centre n // 2: the encoded matrix's x (or the lines' length where longer; a partial echo is shorter
    than the readout and asymmetric about its echo). Lines that fit neither way are refused: a longer readout
    would make the pixels smaller than the header says (a 12 mm bar measured 16 mm)."""
    centres = {int(a.center_sample) for a in acqs}
    if len(centres) > 1:
        raise InputError(f"{path}: the acquisitions' center_sample differs ({sorted(centres)[:6]}); medrecon reads "
                         "lines that share one readout")
    echo = centres.pop() or n_samples // 2  # 0: not set by the writer (an echo at the first sample is no image)
    if echo >= n_samples:
        raise InputError(f"{path}: center_sample {echo} lies beyond the {n_samples} samples of a line; fix the "
                         "acquisition headers")
    n = max(n_samples, n_encoded)
    if not (0 <= n // 2 - echo and n // 2 - echo + n_samples <= n):  # growing n would change the pixel size
        raise InputError(f"{path}: lines of {n_samples} samples with the echo at sample {echo} do not fit a readout "
                         f"of {n} (the header's encoded matrix x {n_encoded}) centred on the echo: the header's "
                         "encoded matrix or the acquisitions' center_sample is wrong; fix them")
    return n, n // 2 - echo


def load_cfl(path: Path) -> Measurement:
    """BART k-space (RO, PE1, 1, COIL[, ..., slices in dim 13]) as 2D multi-slice; mask = sampled positions."""
    a = read_cfl(path)
    refuse_non_finite(a, path, "mri", "(BART's dimension order)")
    a = a.reshape(*a.shape, *([1] * (16 - a.ndim)))
    if a.shape[2] != 1 or any(a.shape[d] != 1 for d in range(4, 16) if d != 13):
        raise InputError(f"{path}: only 2D k-space (RO, PE1, 1, COIL) with slices along dim 13 is read, "
                         f"got dimensions {a.shape}")
    k = np.ascontiguousarray(np.moveaxis(a[:, :, 0, :, 0, 0, 0, 0, 0, 0, 0, 0, 0, :, 0, 0], (3, 2), (0, 1)))
    energy = _energy(k, path)  # (its values checked above, in BART's order)
    _refuse_uncentred(energy, path, (0, 1))  # BART's RO, PE1
    mask = _one_or_per_slice(energy > 0).astype(np.float32)  # sampled positions, not only columns
    grid, info = _grid(k.shape[0], k.shape[-2:], None)
    return _held(Measurement("mri", k if k.shape[1] > 1 else k[:, 0], grid, None, mask, None,
                              {"source": str(path), "layout": "2d", "units": MEASURED,
                               "mask_source": "non-zero samples", **info}), energy)


__all__ = ["MEASURED", "is_ismrmrd", "load_cfl", "load_fastmri", "load_ismrmrd", "parse_ismrmrd_header"]
