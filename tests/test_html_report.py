"""index.html of a series and of a batch: written next to the outputs, and checked in a real headless Chromium
(file://, no server): the slider moves to the slice the URL asks for, the displayed tile is that slice, window/level
changes the rendered grey, the screenshot is not blank. The browser checks skip cleanly without Chromium."""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrecon.io import write_nifti
from medrecon.volume import Volume
from pipelines.html_report import ASSETS, TILE_PAD as PAD, plane_slices, write_batch_index, write_series_page, write_sprite

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _volume(n=8, seed=0):
    """A CT-like volume whose slices differ: a bright square moving with the slice index, soft tissue around."""
    rng = np.random.default_rng(seed)
    data = np.full((n, 20, 24), -1000.0, np.float32)
    data[:, 3:17, 3:21] = 40.0 + rng.normal(0, 5, (n, 14, 18))
    for k in range(n):
        data[k, 6:10, 2 + 2 * k:6 + 2 * k] = 800.0
    return Volume(data, spacing=(1.5, 1.5, 3.0))


@pytest.fixture()
def series(tmp_path):
    folder = tmp_path / "series"
    (folder / "simulation").mkdir(parents=True)
    ref = _volume()
    write_nifti(ref, folder / "simulation" / "reference.nii.gz")
    write_nifti(ref.with_data(ref.data + np.float32(20.0)), folder / "recon.nii.gz")
    write_nifti(ref.with_data(np.abs(ref.data) / 100), folder / "std.nii.gz")
    (folder / "report.json").write_text(json.dumps({"config": {"task": "sparse_view_ct_8", "solver": {"name": "fast"},
                                                               "outputs": {"window": [-1000, 1000]}},
                                                    "timings_s": {"total": 1.5}}))
    write_series_page(folder, title="test series")
    return folder, ref


def _chromium(tmp_path, url, *flags, size=(1000, 1400)):
    if BROWSER is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={size[0]},{size[1]}",
           "--virtual-time-budget=3000", *flags, url]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"Chromium does not run here: {e}")
    if r.returncode != 0:
        pytest.skip(f"Chromium does not run here (exit {r.returncode}): {r.stderr[-300:]}")
    return r.stdout


def _element(dom, element_id):
    m = re.search(rf'<[^>]*id="{element_id}"[^>]*>', dom)
    assert m, f"#{element_id} not in the page"
    return m.group(0)


def test_series_page_files(series):
    folder, ref = series
    page = (folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing from the network
    summary = json.loads((folder / ASSETS / "summary.json").read_text())
    assert summary["methods"] == ["reference", "reconstruction"] and summary["solver"] == "fast"
    assert summary["metrics"]["reconstruction"]["psnr_axial"] < 60  # computed against the reference
    sprite = Image.open(folder / ASSETS / "v1_axial.png")
    assert sprite.size == (3 * (24 + 2 * PAD), 3 * (20 + 2 * PAD))  # 8 slices on a 3 x 3 grid, each framed
    assert (folder / ASSETS / "v2_axial.png").is_file()  # the uncertainty map


def test_slider_moves_to_the_slice_and_shows_it(series, tmp_path):
    folder, ref = series
    k = 5
    dom = _chromium(tmp_path, (folder / "index.html").as_uri() + f"#axial={k + 1}&coronal=3&wl=400,40", "--dump-dom")
    assert re.search(r'id="axial-label"[^>]*>6 / 8<', dom)
    view = _element(dom, "v1-axial")
    assert f'data-slice="{k}"' in view
    # the view shows tile k of its sprite, inside its frame: the sprite scaled by the view's size over the tile's
    w, h = (float(v) for v in re.search(r"width: ([\d.]+)px; height: ([\d.]+)px", view).groups())
    x, y = (float(v) for v in re.search(r"background-position: (-?[\d.]+)px (-?[\d.]+)px", view).groups())
    cols, (cw, ch) = 3, (24 + 2 * PAD, 20 + 2 * PAD)
    assert (x, y) == pytest.approx((-((k % cols) * cw + PAD) * w / 24, -((k // cols) * ch + PAD) * h / 20), abs=0.01)
    sprite = np.asarray(Image.open(folder / ASSETS / "v1_axial.png"), np.float64)
    tile = sprite[(k // cols) * ch + PAD:(k // cols) * ch + PAD + 20, (k % cols) * cw + PAD:(k % cols) * cw + PAD + 24]
    assert tile[7, 2 + 2 * k + 1] > 200 and tile[7, 2 + 2 * (k - 2) + 1] < 200  # the square of slice k, not k-2
    # window/level 400/40 on the SVG filter: slope = (hi - lo) / W
    slope = float(re.search(r'id="fr"[^>]*slope="([-0-9.e]+)"', dom).group(1))
    assert 4 < slope < 6  # display range about -1000..1000 HU (the reference, widened to the window) / 400 HU


def test_a_title_holding_a_placeholder_stays_text(series):
    folder, _ = series
    page = write_series_page(folder, title="t{{VIEW}}<b>").read_text()
    assert "<title>t{{VIEW}}&lt;b&gt;</title>" in page and page.count('"presets": ') == 1  # the view once, in the script


def test_sprite_frames_each_tile_with_its_own_edge(tmp_path):
    """An enlarged view interpolates a pixel or two past its tile's edge: what lies there is the tile's own edge
    repeated, never the next slice (a dark slice beside bright ones showed a bright rim)."""
    slices = np.stack([np.full((5, 7), v, np.float32) for v in (0, 100, 0, 100)])
    slices[:, 2, 3] = 50  # an inner pixel that must not reach the frame
    layout = write_sprite(slices, 0, 100, tmp_path / "s.png")
    sheet = np.asarray(Image.open(tmp_path / "s.png"))
    assert layout["pad"] == PAD >= 1 and layout["tile"] == [7, 5] and (layout["cols"], layout["rows"]) == (2, 2)
    ch, cw = 5 + 2 * PAD, 7 + 2 * PAD
    for k in range(4):
        r, c = divmod(k, 2)
        cell = sheet[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
        inner = cell[PAD:PAD + 5, PAD:PAD + 7]
        assert (inner == np.round(slices[k] * 2.55)).all()
        assert (np.pad(inner, PAD, mode="edge") == cell).all()  # the frame: the tile's own edge


def test_screenshot_is_not_blank_and_window_level_changes_it(series, tmp_path):
    folder, _ = series
    url = (folder / "index.html").as_uri()
    shots = {}
    for name, wl in (("wide", "2000,0"), ("narrow", "100,40")):
        out = tmp_path / f"{name}.png"
        _chromium(tmp_path, f"{url}#axial=4&wl={wl}", f"--screenshot={out}", size=(900, 900))
        shots[name] = np.asarray(Image.open(out).convert("L"), np.float64)
    wide = shots["wide"]
    assert wide.std() > 20 and (wide > 200).mean() > 0.002  # images, not an empty page
    assert np.abs(shots["narrow"] - wide).mean() > 2  # the window really re-greys the pixels


def test_batch_index_links_series_and_sorts(series, tmp_path):
    folder, _ = series
    rows = [{"series_uid": "1.2.3", "output_path": str(folder), "status": "done", "seconds": "12.5", "error": ""},
            {"series_uid": "1.2.4", "output_path": str(tmp_path / "gone"), "status": "failed", "seconds": "0.3",
             "error": "reconstruct: InputError: bad <series>"}]
    index = write_batch_index(tmp_path, rows)
    page = index.read_text()
    assert 'href="series/index.html"' in page and f"series/{ASSETS}/thumb.png" in page
    assert "bad &lt;series&gt;" in page  # escaped
    dom = _chromium(tmp_path, index.as_uri(), "--dump-dom")
    assert dom.count("<tr><td>") == 2 and "1 done, 1 failed" in dom


def test_reconstruct_and_batch_write_their_pages(tmp_path):
    from medrecon.io import write_dicom_series
    from pipelines.cli import main
    vol = _volume(n=3)
    write_dicom_series(Volume(vol.data, vol.spacing, meta={"dicom": {"Modality": "CT"}}), tmp_path / "in" / "a" / "ct",
                       series_description="Head")
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--config", "sparse_view_ct_8",
                 "--set", "solver.name=fbp", "--set", "ct.image_size=16"]) == 0
    series = next((tmp_path / "out" / "a" / "ct").iterdir())
    assert (series / "index.html").is_file() and (series / ASSETS / "v0_sagittal.png").is_file()
    index = (tmp_path / "out" / "index.html").read_text()
    assert f'href="a/ct/{series.name}/index.html"' in index and ">done<" in index
    report = json.loads((series / "report.json").read_text())  # the page's figures are report.json's (2000 HU)
    shown = json.loads((series / ASSETS / "summary.json").read_text())["metrics"]
    assert next(iter(shown.values()))["psnr_axial"] == pytest.approx(report["vs_reference"]["psnr"]["axial"], abs=0.01)


def test_previews_show_a_ras_or_sagittal_stored_volume_as_its_lps_twin(tmp_path):
    """preview.png and the page show patient anatomy the same way whatever order the voxels are stored in: a
    RAS NIfTI (x towards the patient's right) came out rotated 180 degrees, a sagittal stack sideways."""
    from pipelines.html_report import write_series_page
    from pipelines.outputs import orthogonal_views, preview_png

    lps = Volume(np.zeros((6, 10, 12), np.float32), spacing=(0.8, 0.9, 2.0), origin=(-4.0, -5.0, 10.0))
    lps.data[4, 2, 9] = 1.0  # superior, anterior, patient left
    ras = Volume(lps.data[:, ::-1, ::-1].copy(), spacing=lps.spacing, direction=np.diag([-1.0, -1.0, 1.0]),
                 origin=tuple(lps.world_lps([11, 9, 0])))
    sag_dir = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)  # x along P, y along I, z along L
    sag = Volume(np.ascontiguousarray(np.transpose(lps.data, (2, 0, 1))[:, ::-1, :]), spacing=(0.9, 2.0, 0.8),
                 direction=sag_dir, origin=tuple(lps.world_lps([0, 0, 5])))
    for other in (ras, sag):
        assert np.allclose(other.world_lps(np.argwhere(other.data == 1)[0][::-1]), lps.world_lps([9, 2, 4]))
        shown = other.nearest_lps()
        assert shown.spacing == lps.spacing and np.allclose(shown.origin, lps.origin)
        assert all(np.array_equal(a, b) for a, b in zip(orthogonal_views(shown), orthogonal_views(lps)))
        preview_png(other, tmp_path / "other.png", window=(0, 1))
        preview_png(lps, tmp_path / "lps.png", window=(0, 1))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "other.png")), np.asarray(Image.open(tmp_path / "lps.png")))
    for name, v in (("a", lps), ("b", ras)):
        write_nifti(v, tmp_path / name / "recon.nii.gz")
        write_series_page(tmp_path / name)
    sheets = [np.asarray(Image.open(tmp_path / n / "index_files" / "v0_axial.png")) for n in "ab"]
    assert np.array_equal(*sheets)


def test_window_level_boxes_keep_what_is_being_typed(series, tmp_path):
    """Each keystroke rewrote the box from the half-typed value: '-600' became 600 ('-' read as 0), '0.5' became
    0.0000015 (an MR window below 1 could not be typed). Typed here key by key through input events."""
    folder, _ = series
    page = (folder / "index.html").read_text()
    typing = """<script>
    function type(id, text) { const el = document.getElementById(id); el.value = "";
      for (const ch of text) { el.value += ch; el.dispatchEvent(new Event("input")); } }
    type("wc", "-600"); type("ww", "0.5");
    document.body.insertAdjacentHTML("beforeend", `<p id="typed">${document.getElementById("wc").value}|` +
      `${document.getElementById("ww").value}|${document.getElementById("fr").getAttribute("slope")}</p>`);
    </script></body>"""
    (folder / "typed.html").write_text(page.replace("</body>", typing))
    dom = _chromium(tmp_path, (folder / "typed.html").as_uri(), "--dump-dom")
    wc, ww, slope = re.findall(r'id="typed">([^<$]*)<', dom)[-1].split("|")  # the element, not the script's text
    assert (wc, ww) == ("-600", "0.5")
    view = json.loads(re.search(r"const V = (\{.*?\});\n", page).group(1))
    assert float(slope) == pytest.approx((view["hi"] - view["lo"]) / 0.5, rel=1e-6)  # the window typed, applied


def test_the_page_shows_the_runs_own_scores_and_their_notes_without_recomputing(tmp_path, monkeypatch):
    """The page recomputed every score (21 s and 2.4 GB on 100 x 512^2, inside the output's temporary) and showed
    none above 64 M voxels; it takes report.json's. An unscorable plane shows '—', not None, and the scoring's notes
    (a single slice's coronal PSNR is over lines) are listed under the table."""
    import medrecon.metrics
    from medrecon.io import write_nifti
    from pipelines import tasks
    src = tmp_path / "one.nii.gz"
    write_nifti(_volume(n=1), src)
    calls = []
    real = medrecon.metrics.per_axis_metrics
    monkeypatch.setattr(medrecon.metrics, "per_axis_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    tasks.reconstruct("sparse_view_ct_8", src, tmp_path / "out", ["solver.name=fbp", "ct.image_size=16"])
    assert not calls  # the page computed nothing (the run scored itself in Problem.score)
    page = (tmp_path / "out" / "index.html").read_text()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "<td>—</td>" in page and "<td>None</td>" not in page
    assert report["vs_reference"]["notes"] and html.escape(report["vs_reference"]["notes"][-1]) in page
    assert report["timings_s"]["page"] > 0 and report["timings_s"]["total"] >= report["timings_s"]["page"]


def test_the_batch_table_sorts_uids_as_text(tmp_path):
    """Sorting took every SeriesInstanceUID for the number 1.3 (parseFloat), so clicking its column did nothing."""
    rows = [{"series_uid": f"1.3.6.1.4.1.{k}", "output_path": "", "status": "failed", "seconds": "1", "error": "x"}
            for k in (2, 10)]
    page = write_batch_index(tmp_path, rows).read_text()
    click = '<script>[...document.querySelectorAll("#t th")].find(th => th.textContent === "SeriesInstanceUID")' \
            '.click();</script></body>'
    (tmp_path / "clicked.html").write_text(page.replace("</body>", click))
    dom = _chromium(tmp_path, (tmp_path / "clicked.html").as_uri(), "--dump-dom")
    assert dom.index("1.3.6.1.4.1.10") < dom.index("1.3.6.1.4.1.2<")


def test_bone_reaches_white_and_the_thumbnail_keeps_its_aspect(tmp_path):
    """CT pages: the sprites' grey range stopped at the 99.95th percentile (about 1000 HU), so the bone preset
    (W 1800 L 400, white at 1300 HU) never reached white; the batch thumbnail stretched a 48 x 32 slice to a square."""
    from pipelines.html_report import write_series_page
    data = np.full((3, 32, 48), 0.0, np.float32)  # water: grey, so the thumbnail's padding shows as black
    data[:, 8:24, 8:40] = 40.0
    data[1, 15, 21] = 2000.0  # a speck of cortical bone, under the 0.05 % the percentile leaves out
    folder = tmp_path / "ct"
    folder.mkdir()
    write_series_page(folder, [("reconstruction", Volume(data, spacing=(1.0, 1.0, 2.0)))], (-1000.0, 1000.0))
    view = json.loads(re.search(r"const V = (\{.*?\});\n", (folder / "index.html").read_text()).group(1))
    assert view["hi"] >= 1300.0
    thumb = np.asarray(Image.open(folder / ASSETS / "thumb.png"))
    assert thumb.shape == (96, 96) and thumb[:12].max() == 0 and thumb[-12:].max() == 0  # 96 x 64 in the middle
    assert thumb[48].max() > 0


def test_the_page_says_the_unit_its_window_is_in(tmp_path):
    """MR pages work in normalised magnitude (0..1) while the derived DICOM is in the source's units: the page
    says which unit its window boxes and range are in."""
    from medrecon.io import write_nifti
    from pipelines import tasks
    data = np.zeros((2, 32, 32), np.float32)
    data[:, 8:24, 8:24] = 300.0
    write_nifti(Volume(data), tmp_path / "mr.nii.gz")
    tasks.reconstruct("cs_mri_x4", tmp_path / "mr.nii.gz", tmp_path / "out", ["solver.name=zero_filled"])
    assert re.search(r"display range [-0-9.e]+ to [-0-9.e]+ normalised magnitude,", (tmp_path / "out" / "index.html").read_text())


def test_a_thin_slabs_coronal_and_sagittal_views_are_stretched_as_in_preview_png(tmp_path):
    """A 4-slice slab of 1 mm slices over 180 mm drew its coronal view 256 x 6 px on the page, unreadable, while
    preview.png stretched it by a whole factor; the page uses the same factor and says so."""
    from pipelines.html_report import write_series_page
    from pipelines.outputs import z_stretch
    vol = Volume(np.random.default_rng(0).uniform(-1000, 1000, (4, 180, 180)).astype(np.float32),
                 spacing=(1.0, 1.0, 1.0))
    folder = tmp_path / "slab"
    folder.mkdir()
    write_series_page(folder, [("reconstruction", vol)], (-1000.0, 1000.0))
    page = (folder / "index.html").read_text()
    view = json.loads(re.search(r"const V = (\{.*?\});\n", page).group(1))
    k = z_stretch(vol)
    assert k == 12 and view["stretch"] == k
    (w, h), (aw, ah) = view["size"]["coronal"], view["size"]["axial"]
    assert h == pytest.approx(aw * 4 * k / 180, abs=1) and h >= 60


def test_a_single_slices_preview_is_its_axial_panel_alone(tmp_path):
    """A one-slice input's coronal and sagittal panels were its one row stretched x110 into a striped band beside
    the axial panel; preview.png now shows the axial panel only, at full height, and says why, and the page shows
    the axial view alone."""
    from pipelines.outputs import preview_png
    rng = np.random.default_rng(0)
    one = Volume(rng.uniform(0, 1, (1, 90, 120)).astype(np.float32), spacing=(1.0, 1.0, 3.0))
    two = Volume(rng.uniform(0, 1, (2, 90, 120)).astype(np.float32), spacing=(1.0, 1.0, 3.0))
    preview_png(one, tmp_path / "one.png", window=(0, 1), height=180)
    preview_png(two, tmp_path / "two.png", window=(0, 1), height=180)
    one_png, two_png = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert one_png.size == (240, 180 + 14)  # 120 x 90 mm at 2 px / mm, under a label line
    assert two_png.width > 240 + 2 * 4  # two slices keep their coronal and sagittal panels
    for name, vol, planes in (("one", one, ["axial"]), ("two", two, ["axial", "coronal", "sagittal"])):
        folder = tmp_path / name
        folder.mkdir()
        write_series_page(folder, [("reconstruction", vol)], (0.0, 1.0))
        view = json.loads(re.search(r"const V = (\{.*?\});\n", (folder / "index.html").read_text()).group(1))
        assert view["planes"] == planes and list(view["rows"][0]["sprites"]) == planes
        assert sorted(p.name for p in (folder / ASSETS).glob("v0_*.png")) == sorted(f"v0_{p}.png" for p in planes)


def test_every_view_names_the_patients_sides(series, tmp_path):
    """No L/R, A/P or S/I letters were shown, so a reader could not confirm the radiological convention; each view
    names the patient's side at its four edges (the orientation itself: the RAS / sagittal test above)."""
    folder, _ = series
    dom = _chromium(tmp_path, (folder / "index.html").as_uri(), "--dump-dom")
    cells = re.findall(r'<div id="v0-(\w+)".*?</div>(.*?)<div class="lab">', dom, flags=re.S)
    sides = {p: {c: (float(x), float(y)) for x, y, c in
                 re.findall(r'class="side" style="left: ?([-\d.]+)px; ?top: ?([-\d.]+)px;?">(\w)<', rest)}
             for p, rest in cells}
    expect = {"axial": "RLAP", "coronal": "RLSI", "sagittal": "APSI"}  # left, right, top, bottom edge
    for plane, (left, right, top, bottom) in expect.items():
        at = sides[plane]
        assert set(at) == {left, right, top, bottom}, plane
        assert at[left][0] < at[top][0] < at[right][0], plane  # radiological: the patient's right on the left
        assert at[top][1] < at[left][1] < at[bottom][1], plane  # anterior (axial) / superior at the top


def test_a_sprite_scales_each_axis_on_its_own_so_every_slice_keeps_its_row(tmp_path):
    """One scale for both axes of a tile squeezed a coronal view of 5 slices of 512² to 2 rows, blending slices
    (the view that shows whether neighbouring slices agree)."""
    coronal = np.stack([np.repeat(np.arange(5, dtype=np.float32)[:, None] * 100, 512, axis=1)] * 3)  # (3, 5, 512)
    layout = write_sprite(coronal, 0, 400, tmp_path / "c.png")
    assert layout["tile"] == [256, 5]
    sheet = np.asarray(Image.open(tmp_path / "c.png"))
    column = sheet[PAD:PAD + 5, PAD + 100]
    assert list(column) == [0, 64, 128, 191, 255]


def test_the_uncertainty_row_says_its_own_scale_and_earlier_outputs_are_marked(tmp_path):
    """The posterior std row runs black 0 to white at its own 99.5th percentile, which the page never said (a
    reader took white for the image rows' 1300 HU); a batch row that is no result of this run (a conflict, a
    failure) showed the earlier output's method and scores as its own."""
    from pipelines.html_report import write_series_page

    ref = Volume(np.linspace(-1000, 1000, 2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16))
    std = Volume(np.full((2, 16, 16), 37.5, np.float32))
    (tmp_path / "s").mkdir()
    page = write_series_page(tmp_path / "s", [("reference", ref), ("reconstruction", ref.with_data(ref.data + 10))],
                             report={"config": {"modality": "ct"}}, std=std).read_text()
    assert "uncertainty (posterior std; black 0, white 37.5 HU)" in page
    (tmp_path / "p").mkdir()
    pair = write_series_page(tmp_path / "p", [("reconstruction", ref)], std=std,  # not a calibrated std: say so
                             report={"config": {"modality": "ct"}, "antithetic_samples": True}).read_text()
    assert "uncertainty (an antithetic pair's spread; black 0, white 37.5 HU)" in pair
    (tmp_path / "s" / "report.json").write_text("{}")
    rows = [{"series_uid": "1.2", "output_path": "s", "status": "conflict", "seconds": "0.0", "error": "x"}]
    index = write_batch_index(tmp_path, rows).read_text()
    assert "(earlier output)" in index


def test_the_batch_table_names_each_rows_input_folder(tmp_path):
    """A folder whose DICOM files are all unreadable has no series UID and no output: its row's series and UID cells
    were empty, and only the error text said which folder failed. Every row names its input folder (escaped)."""
    rows = [{"series_uid": "", "input_path": "patB/study1/ct", "output_path": "", "status": "failed", "seconds": "0.0",
             "error": "InputError: none of its 4 DICOM file(s) can be read"},
            {"series_uid": "1.2", "input_path": "Doe <J>/ct", "output_path": "", "status": "pending", "seconds": "",
             "error": ""}]
    page = write_batch_index(tmp_path, rows).read_text()
    assert "<th></th><th>input</th><th>series</th>" in page
    assert "<tr><td></td><td>patB/study1/ct</td><td></td><td></td><td>failed</td>" in page
    assert "<td>Doe &lt;J&gt;/ct</td>" in page
