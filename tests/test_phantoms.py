"""Synthetic phantoms: reproducibility, tissue values, texture, slice continuity, geometry, speed."""
import time

import numpy as np
import pytest
from scipy import ndimage

from medrecon.errors import InputError

from pipelines.phantoms import (CT_LABELS, HELD_OUT_SEEDS, MR_LABELS, TRAIN_SEEDS, ct_phantom, mr_phantom,
                                split_seeds)

SHAPE = (32, 128, 128)


CPU_SECONDS = {}  # generation time of each fixture (process time: one core, whatever else runs)


def _timed(name, make, **kw):
    start = time.process_time()
    out = make(SHAPE, return_labels=True, **kw)
    CPU_SECONDS[name] = time.process_time() - start
    return out


@pytest.fixture(scope="module")
def thorax():
    return _timed("thorax", ct_phantom, seed=1000, z_center_mm=110)


@pytest.fixture(scope="module")
def abdomen():
    return _timed("abdomen", ct_phantom, seed=1000, z_center_mm=-70)


@pytest.fixture(scope="module")
def brain():
    return _timed("brain", mr_phantom, seed=1000, z_center_mm=15)


def _interior(mask, r=2):
    """The mask without its in-plane border (avoids partial-volume voxels at tissue edges)."""
    return ndimage.binary_erosion(mask, np.ones((1, 2 * r + 1, 2 * r + 1), bool))


def _continuity(data, gap=8):
    """Mean |difference| of adjacent slices, and of all slice pairs at least `gap` slices apart."""
    adjacent = np.mean(np.abs(np.diff(data, axis=0)))
    z = data.shape[0]
    far = np.mean([np.mean(np.abs(data[i] - data[j])) for i in range(z) for j in range(i + gap, z)])
    return adjacent, far


def test_seed_split_is_disjoint_and_documented():
    assert split_seeds("train") == TRAIN_SEEDS == range(0, 1000)
    assert split_seeds("held_out") == HELD_OUT_SEEDS == range(1000, 1100)
    assert not set(TRAIN_SEEDS) & set(HELD_OUT_SEEDS)
    with pytest.raises(InputError):
        split_seeds("validation-set-7")


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
def test_reproducible_from_seed_and_seeds_differ(make):
    a, b, c = (make((4, 48, 48), seed=s).data for s in (1001, 1001, 1002))
    assert np.array_equal(a, b)
    scale = 1000.0 if make is ct_phantom else 1.0  # HU vs normalised magnitude
    assert np.mean(np.abs(a - c)) > 0.05 * scale


def test_default_levels_cover_the_torso():
    """Without z_center_mm the imaged level is drawn from the seed: thorax and abdomen both occur."""
    levels = [ct_phantom((1, 4, 4), seed=s, pixel_size_mm=1.0).meta["z_center_mm"] for s in HELD_OUT_SEEDS[:6]]
    assert max(levels) > 80 and min(levels) < -100


def test_ct_geometry_and_meta(thorax):
    vol, _ = thorax
    assert vol.shape == SHAPE and vol.data.dtype == np.float32
    assert vol.spacing == (3.0, 3.0, 2.5)  # 384 mm field of view / 128, default slice thickness
    centre = vol.world_lps([(SHAPE[2] - 1) / 2, (SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    assert vol.meta["modality"] == "CT" and vol.meta["seed"] == 1000
    assert vol.meta["source"] == "medrecon synthetic phantom"
    custom = ct_phantom((4, 40, 50), seed=1, pixel_size_mm=1.2, slice_thickness_mm=1.0)
    assert custom.shape == (4, 40, 50) and custom.spacing == (1.2, 1.2, 1.0)
    with pytest.raises(InputError, match="shape"):
        ct_phantom((40, 50), seed=1)
    with pytest.raises(InputError, match="contrast"):
        mr_phantom((4, 40, 40), contrast="FLAIR")


def test_ct_air_outside_the_body_is_minus_1000(thorax):
    vol, lab = thorax
    air = _interior(lab == CT_LABELS["air"], 3)
    assert air.mean() > 0.2
    assert np.max(np.abs(vol.data[air] + 1000)) < 1.0


def test_ct_thorax_has_lungs_with_vessels_and_bone(thorax):
    vol, lab = thorax
    body = (lab != CT_LABELS["air"]) & (lab != CT_LABELS["table"])
    lung = lab == CT_LABELS["lung"]
    assert lung.sum() / body.sum() > 0.2
    assert -900 < np.median(vol.data[lung]) < -780
    # vessels inside the lungs: a clear bright tail of the lung-field histogram
    lung_field = _interior(ndimage.binary_closing(lung, np.ones((1, 5, 5), bool)), 2)
    assert np.mean(vol.data[lung_field] > -500) > 0.01
    assert vol.data[lab == CT_LABELS["bone"]].max() > 700
    assert np.median(vol.data[lab == CT_LABELS["bone"]]) > 150


def test_ct_abdomen_tissue_values(abdomen):
    vol, lab = abdomen
    med = {k: np.median(vol.data[_interior(lab == CT_LABELS[k], 1)]) for k in ("fat", "muscle", "liver", "blood")}
    assert -120 < med["fat"] < -80
    assert 0 < med["muscle"] < 100 and 40 < med["liver"] < 80
    assert 110 < med["blood"] < 260  # contrast-enhanced vessels
    soft = np.isin(lab, [CT_LABELS[k] for k in ("muscle", "liver", "spleen")])
    assert 0 < np.median(vol.data[soft]) < 100
    assert vol.data[lab == CT_LABELS["bone"]].max() > 700


def test_ct_texture_is_correlated_not_piecewise_constant(abdomen):
    vol, lab = abdomen
    for tissue in ("liver", "muscle"):
        inner = _interior(lab == CT_LABELS[tissue], 2)
        assert inner.sum() > 500
        assert vol.data[inner].std() > 5.0  # HU
        pair = inner[:, :, :-1] & inner[:, :, 1:]
        lag1 = np.corrcoef(vol.data[:, :, :-1][pair], vol.data[:, :, 1:][pair])[0, 1]
        assert lag1 > 0.3  # smooth correlated texture, not white noise


@pytest.mark.parametrize("name", ["thorax", "abdomen", "brain"])
def test_slice_to_slice_continuity(name, request):
    """Adjacent slices differ much less than slices >= 8 apart (measured ratio about 0.25-0.3)."""
    vol, _ = request.getfixturevalue(name)
    adjacent, far = _continuity(vol.data)
    assert adjacent < 0.45 * far, (adjacent, far)


def test_mr_range_contrast_and_texture(brain):
    vol, lab = brain
    assert vol.meta["modality"] == "MR" and vol.spacing == (1.875, 1.875, 1.875)
    assert vol.data.min() >= 0.0 and vol.data.max() <= 1.0
    med = {k: np.median(vol.data[lab == MR_LABELS[k]]) for k in ("csf", "gm", "wm", "ventricle")}
    assert med["wm"] > med["gm"] + 0.1 > med["csf"] + 0.2  # T1: white > grey > CSF
    assert np.all(vol.data[_interior(lab == MR_LABELS["background"], 3)] < 1e-3)
    assert vol.data[_interior(lab == MR_LABELS["wm"], 2)].std() > 0.01
    # folded cortex: grey matter is a large share of the brain, not just a rim
    brain_tissue = np.isin(lab, [MR_LABELS[k] for k in ("gm", "wm", "deep_gm")])
    assert 0.2 < np.mean(lab[brain_tissue] == MR_LABELS["gm"]) < 0.7
    t2, lab2 = mr_phantom((8, 128, 128), seed=1000, contrast="T2", z_center_mm=15, return_labels=True)
    med2 = {k: np.median(t2.data[lab2 == MR_LABELS[k]]) for k in ("csf", "gm", "wm")}
    assert med2["csf"] > med2["gm"] > med2["wm"]  # T2: reversed


@pytest.mark.parametrize("make, kw", [(ct_phantom, {}), (mr_phantom, {"slice_thickness_mm": 3.0})])
def test_anatomy_does_not_depend_on_the_grid(make, kw):
    """The same seed on a 2x coarser grid (same field of view) has the same tissue at shared voxel centres,
    so a fine phantom can simulate data for a coarse reconstruction without the inverse crime."""
    fine, lab_f = make((6, 129, 129), seed=1003, pixel_size_mm=3.0, z_center_mm=0, return_labels=True, **kw)
    coarse, lab_c = make((6, 65, 65), seed=1003, pixel_size_mm=6.0, z_center_mm=0, return_labels=True, **kw)
    shared = lab_f[:, ::2, ::2]
    assert np.mean(shared == lab_c) > 0.99


@pytest.mark.parametrize("name", ["thorax", "abdomen", "brain"])
def test_runtime_32x128x128_under_2_seconds(name, request):
    request.getfixturevalue(name)
    assert CPU_SECONDS[name] < 2.0, CPU_SECONDS
