"""A small CT series for the batch tests: a disk of seed-dependent HU in air, 3 (``slices``) slices of 2 x 2 x 3 mm."""
import numpy as np

from medrecon.io import write_dicom_series
from medrecon.volume import Volume


def write_test_series(folder, seed: int, description: str, size: int = 24, slices: int = 3) -> None:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (slices, size, size)), indexing="ij")
    hu = np.where(x ** 2 + (y - 0.1 * seed) ** 2 < 0.6, 40.0 + 10 * seed, -1000.0).astype(np.float32)
    vol = Volume(hu, spacing=(2.0, 2.0, 3.0), meta={"dicom": {"Modality": "CT", "PatientID": f"P{seed}"}})
    write_dicom_series(vol, folder, series_description=description)


def write_named_series(folder, seed: int = 1, surname: str = "Zyxwaldo", given: str = "Quintessa",
                       patient_id: str = "PID4711", damaged: str = "", topogram: bool = False) -> list[str]:
    """A series of a named patient (``write_test_series`` with the patient, study and institution tags of a real
    one, files named after the patient, one slice 0.05 mm off the grid so that the reader warns naming the folder;
    ``damaged``: every file cut inside its "pixels" or its "header"; ``topogram``: a second, smaller series of the
    patient beside it, described 'Topogram SURNAME GIVEN', which the reader passes over with a note). Returns what identifies it: the tag values,
    every source UID, the file-list and voxel hashes, the patient's names (which the folder and files carry too)."""
    import pydicom

    from medrecon.io import list_series, read_volume
    from medrecon.io.common import voxels_sha256

    write_test_series(folder, seed, f"{given} {surname} chest")
    tags = {"PatientName": f"{surname}^{given}", "PatientID": patient_id, "PatientBirthDate": "19700101",
            "StudyDate": "20240229", "AccessionNumber": f"ACC{patient_id[-4:]}9", "InstitutionName": "St Zeta Hospital",
            "ReferringPhysicianName": "Oxbridgeton^Wilhelmina", "Manufacturer": "ACME"}
    said = [surname, given, patient_id, "19700101", "20240229", tags["AccessionNumber"], "St Zeta",
            "Oxbridgeton", "Wilhelmina"]
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value)
        if k == 1:
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.05]
        said += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID),
                 str(ds.SOPInstanceUID)]
        ds.save_as(folder / f"{surname}_{given}_{k + 1:03d}.dcm")
        f.unlink()
    said += [list_series(folder)[0].files_sha256]
    if topogram:
        import shutil
        write_test_series(folder.parent / "topogram.tmp", seed + 5, f"Topogram {surname} {given}", slices=2)
        for k, f in enumerate(sorted((folder.parent / "topogram.tmp").iterdir())):
            ds = pydicom.dcmread(f)
            said += [str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), f"Topogram {surname}"]
            ds.save_as(folder / f"{surname}_{given}_topo_{k + 1:03d}.dcm")
        shutil.rmtree(folder.parent / "topogram.tmp")
    if damaged:
        for f in folder.iterdir():
            f.write_bytes(f.read_bytes()[:-600] if damaged == "pixels" else f.read_bytes()[:300])
    else:
        said += [voxels_sha256(read_volume(folder))]
    return sorted(set(said))


def leaked(root, identifiers) -> list[str]:
    """'path: identifier' for each identifier found in a path under ``root`` (relative) or in any byte of a file
    there (hidden ones too; .gz decompressed, .npz/.zip members read; as UTF-8, UTF-16 and UTF-32, the last being
    how numpy stores text)."""
    import gzip
    import io
    import zipfile
    from pathlib import Path

    found = []
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        blobs = [p.read_bytes()] if p.is_file() else []
        if p.name.endswith(".gz"):
            blobs.append(gzip.decompress(blobs[0]))
        if blobs and zipfile.is_zipfile(io.BytesIO(blobs[0])):
            with zipfile.ZipFile(io.BytesIO(blobs[0])) as z:
                blobs += [z.read(n) for n in z.namelist()]
        for i in identifiers:
            forms = [i.encode(c) for c in ("utf-8", "utf-16-le", "utf-32-le")]
            if i in rel or any(f in b for f in forms for b in blobs):
                found.append(f"{rel}: {i}")
    return found
