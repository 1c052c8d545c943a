"""`medrecon info` and `medrecon convert`: volume I/O from the command line.

Both read with medrecon.io.read_volume and `convert` writes with medrecon.io.write_volume, the same
reader and writers the reconstruction pipelines use. Bad input raises medrecon.InputError, which
`pipelines.cli.main` prints as one line (exit status 2).
"""
from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from medrecon import InputError, Volume
from medrecon.io import dicom_text, output_format, read_volume, write_volume
from medrecon.io.dicom_write import SOP_CLASSES
from medrecon.volume import PLANES

from .app import app, say

#: ``convert --plane`` choices: ``medrecon.volume.PLANES``
Plane = Enum("Plane", {p: p for p in PLANES}, type=str)
DICOM_MODALITIES = (*SOP_CLASSES, "OT")  # what convert writes: CT / MR image storage, else secondary capture


SERIES_HELP = "SeriesInstanceUID to read from a folder holding several series (default: the largest)."
SPACING_HELP = "Voxel spacing 'z,y,x' in mm for .npy input (default 1 mm)."
RESAMPLE_HELP = ("Interpolate a DICOM series whose slice gaps are uneven (beyond 0.2 mm) linearly onto "
                 "about its median spacing, from its first slice to its last, instead of refusing it.")
AXIS_WORDS = {"L": "patient left", "R": "patient right", "P": "posterior", "A": "anterior", "S": "superior",
              "I": "inferior"}


def parse_spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    """'z,y,x' in mm -> (z, y, x) floats; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"--spacing {text!r}: give three positive numbers 'z,y,x' in mm, e.g. 2.5,0.7,0.7")
    return values


def describe(vol: Volume) -> dict:
    """What `info` reports: geometry in (z, y, x) order, value range, series and warnings (no patient data)."""
    out = {"path": vol.meta.get("source"), "format": vol.meta.get("format"), **vol.describe(),
           "orientation": vol.orientation, "oblique": vol.is_oblique}
    dicom = vol.meta.get("dicom", {})
    if dicom:
        out.update(series_uid=vol.meta.get("series_uid"), modality=dicom.get("Modality"),
                   series_description=dicom_text(dicom.get("SeriesDescription")))
    if "series_in_folder" in vol.meta:
        out["series"] = vol.meta["series_in_folder"]
    out["warnings"] = list(vol.meta.get("warnings", []))
    return out


@app.command()
def info(path: Path = typer.Argument(..., help="DICOM series folder or file, .nii/.nii.gz, .nrrd/.mha/.mhd or .npy."),
         series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
         as_json: bool = typer.Option(False, "--json", help="Print JSON (shape and spacing in (z, y, x) order)."),
         spacing: Optional[str] = typer.Option(None, "--spacing", help=SPACING_HELP),
         resample: bool = typer.Option(False, "--resample", help=RESAMPLE_HELP)):
    """Show the series found, shape (Z,Y,X), spacing, orientation and value range of a volume."""
    tied = _tied_series(path) if series is None else None
    if tied:  # nothing to read without --series: say what is there
        if as_json:
            typer.echo(json.dumps({"path": str(path), "series": tied, "series_uid": None}, indent=2))
        else:
            for s in tied:
                say(f"  series {s['uid']}  {s['n_files']} files  {s['modality']}  '{s['description']}'")
            say(f"{path}: the largest series are the same size; choose one with --series UID")
        return
    d = describe(read_volume(path, series=series, spacing=parse_spacing(spacing), resample_nonuniform=resample))
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    # say for the lines holding a path or a DICOM description (a newline or terminal escape in them escaped, one
    # line each); typer.echo for those made of numbers and fixed words only, which need no escaping
    for s in d.get("series", []):
        mark = "*" if s["uid"] == d.get("series_uid") else " "
        say(f"{mark} series {s['uid']}  {s['n_files']} files  {s['modality']}  '{s['description']}'")
    say(f"path:          {d['path']} ({d['format']})")  # a newline in it: \\n, one line
    typer.echo(f"shape (Z,Y,X): {' x '.join(map(str, d['shape']))}")
    typer.echo(f"spacing (z,y,x) mm: {', '.join(f'{v:g}' for v in d['spacing'])}")
    typer.echo(f"origin (LPS) mm:    {', '.join(f'{v:g}' for v in d['origin_lps'])}")
    towards = ", ".join(AXIS_WORDS[c] for c in d["orientation"])
    typer.echo(f"orientation:   {d['orientation']}: voxel axes x, y, z run towards {towards}"
               + (" (nearest; oblique)" if d["oblique"] else ""))
    typer.echo(f"values:        {d['range'][0]:g} .. {d['range'][1]:g}")


def _tied_series(path: Path) -> list[dict] | None:
    """The series of a DICOM folder when its two largest are the same size (reading it needs --series), else None."""
    from medrecon.io import list_series
    from medrecon.io.dicom_scan import tied
    if not path.is_dir():
        return None
    found = list_series(path)
    if not tied(found):  # as choose_series decides: scouts do not tie
        return None
    return [{"uid": s.uid, "n_files": s.n_files, "modality": s.modality, "description": s.description} for s in found]


@app.command()
def convert(input: Path = typer.Argument(..., help="DICOM series folder or file, .nii/.nii.gz, .nrrd/.mha/.mhd or .npy."),
            output: Path = typer.Argument(..., help="A .nii/.nii.gz or .nrrd/.mha file, or a folder for a derived DICOM series."),
            series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
            resample: bool = typer.Option(False, "--resample", help=RESAMPLE_HELP),
            spacing: Optional[str] = typer.Option(None, "--spacing", help=SPACING_HELP),
            modality: Optional[str] = typer.Option(None, "--modality",
                                                   help="DICOM output: CT, MR or OT (default: the source's, else OT)."),
            description: Optional[str] = typer.Option(None, "--description",
                                                      help="DICOM output: SeriesDescription (64 characters; default "
                                                           "'medrecon convert'). NIfTI: the header's descrip (80 "
                                                           "bytes, a longer one is cut with a warning; default "
                                                           "none). NRRD/MHA: refused (no such field)."),
            deidentify: bool = typer.Option(False, "--deidentify", help="DICOM output: no patient identifiers "
                                            "(DICOM PS3.15 basic profile). NIfTI and NRRD/MHA output never hold "
                                            "any (voxels and geometry only, no DICOM tag, nothing else written); "
                                            "with --deidentify a source flagged with burned-in text is refused "
                                            "for them too."),
            plane: Optional[Plane] = typer.Option(None, "--plane", help="Re-stack the voxels so that the slices are "
                                                  "axial, coronal or sagittal (head up; no interpolation): a 3D "
                                                  "acquisition stored in another plane, for the axial priors.")):
    """Convert between DICOM series, NIfTI and NRRD/MHA; the output type follows OUTPUT."""
    kind = output_format(output)
    if modality is not None and kind != "DICOM":  # refused, as it could not take effect
        raise InputError(f"--modality applies to DICOM output; {output} is {kind}, which stores no modality: leave "
                         "--modality out, or give a folder path for a DICOM series")
    if description is not None and kind == "NRRD/MHA":
        raise InputError(f"--description applies to DICOM and NIfTI output; {output} is NRRD/MHA, which stores no "
                         "description: leave --description out, or write .nii.gz or a DICOM series")
    if modality is not None and modality.upper() not in DICOM_MODALITIES:
        raise InputError(f"--modality {modality}: give one of {', '.join(DICOM_MODALITIES)}")
    vol = read_volume(input, series=series, spacing=parse_spacing(spacing), resample_nonuniform=resample,
                      plane=None if plane is None else plane.value)
    if description is None and kind == "DICOM":
        description = "medrecon convert"
    out = write_volume(vol, output, overwrite=overwrite, series_description=description, modality=modality,
                       deidentify=deidentify)
    say(f"wrote {out}: shape (Z,Y,X) {' x '.join(map(str, vol.shape))}, "
        f"spacing (z,y,x) {', '.join(f'{v:g}' for v in vol.spacing_zyx)} mm, voxel axes {vol.orientation}"
        + (f" ({plane.value} slices)" if plane is not None else ""))
