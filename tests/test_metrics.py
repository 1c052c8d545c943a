"""medrecon.metrics: per-plane PSNR/SSIM checked against closed-form values."""
import math

import numpy as np
import pytest

from medrecon.metrics import PSNR_CAP, per_axis_metrics, psnr


def _ref(shape=(6, 16, 12), seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape)


def test_uniform_offset_gives_the_same_psnr_in_every_plane():
    ref = _ref()
    m = per_axis_metrics(ref, ref + 0.1, data_range=2.0)
    expected = 10 * math.log10(2.0 ** 2 / 0.1 ** 2)
    for plane in ("axial", "coronal", "sagittal", "volume"):
        assert m["psnr"][plane] == pytest.approx(expected, abs=1e-9)
    assert m["data_range"] == 2.0


def test_error_in_one_axial_slice_separates_the_planes():
    ref = _ref()
    z, e, r = ref.shape[0], 0.2, 1.0
    x = ref.copy()
    x[2] += e
    m = per_axis_metrics(ref, x, data_range=r)
    one = 10 * math.log10(r ** 2 / e ** 2)
    assert m["psnr"]["axial"] == pytest.approx(((z - 1) * PSNR_CAP + one) / z, abs=1e-9)
    spread = 10 * math.log10(r ** 2 * z / e ** 2)  # every coronal/sagittal image has one bad row of z
    assert m["psnr"]["coronal"] == pytest.approx(spread, abs=1e-9)
    assert m["psnr"]["sagittal"] == pytest.approx(spread, abs=1e-9)
    assert m["psnr"]["volume"] == pytest.approx(spread, abs=1e-9)
    assert m["ssim"]["axial"] < 1.0 and m["ssim"]["coronal"] < 1.0


def test_ssim_closed_form_for_constant_images():
    v, c, r = 0.5, 0.1, 1.0
    ref = np.full((5, 9, 9), v)
    m = per_axis_metrics(ref, ref + c, data_range=r)
    c1 = (0.01 * r) ** 2
    u = v - ref.min()  # SSIM is taken from the reference's minimum (here the reference itself: u = 0)
    expected = (2 * u * (u + c) + c1) / (u ** 2 + (u + c) ** 2 + c1)  # contrast/structure terms are 1
    for plane in ("axial", "coronal", "sagittal", "volume"):  # the volume's 3D filters run in float32
        assert m["ssim"][plane] == pytest.approx(expected, rel=1e-5 if plane == "volume" else 1e-9)
    ident = per_axis_metrics(ref, ref, data_range=r)
    assert ident["ssim"]["volume"] == pytest.approx(1.0) and ident["psnr"]["volume"] == PSNR_CAP


def test_default_data_range_and_errors():
    ref = _ref()
    assert per_axis_metrics(ref, ref * 0.9)["data_range"] == pytest.approx(ref.max() - ref.min())
    with pytest.raises(ValueError, match="one shape"):
        per_axis_metrics(ref, ref[:-1])
    with pytest.raises(ValueError, match=r"must be 3D \(Z, Y, X\) arrays, got shape \(16, 12\) \(for one slice"):
        per_axis_metrics(ref[0], ref[0])  # said 'of one shape' of two images of one shape
    with pytest.raises(ValueError, match="the reference is one value throughout: give the range to score over"):
        per_axis_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match=r"got -5.0; give a positive number$"):  # not 'a constant reference?'
        per_axis_metrics(ref, ref, data_range=-5.0)
    thin = per_axis_metrics(np.zeros((2, 8, 8)), np.ones((2, 8, 8)), data_range=1.0)  # #13.16: no refusal
    assert thin["ssim"]["axial"] is not None and thin["ssim"]["coronal"] is None and thin["ssim"]["volume"] is None
    assert all(">= 3" in n or "too thin" in n for n in thin["notes"])
    one = per_axis_metrics(np.zeros((1, 8, 8)), np.ones((1, 8, 8)), data_range=1.0)  # one slice: what its
    assert "coronal and sagittal PSNR: means over lines" in one["notes"][-1]  # coronal/sagittal PSNR mean


def test_ssim_does_not_depend_on_where_zero_is_and_the_range_must_be_finite():
    """SSIM's luminance term is not shift-invariant: on HU (water at 0) a flat 20 HU bias scored 0.5, the same
    images from 0 0.9998. Scores are taken on both images less the reference's minimum; an infinite data range
    (PSNR 100 on every plane, SSIM NaN) is refused."""
    ref = np.zeros((4, 16, 16))
    ref[:, :2] = -1000.0  # some air: the reference's minimum
    got = per_axis_metrics(ref, ref + np.where(ref == 0, 20.0, 0.0), 2000.0)
    shifted = per_axis_metrics(ref + 1000, ref + 1000 + np.where(ref == 0, 20.0, 0.0), 2000.0)
    assert got["ssim"] == shifted["ssim"] and got["ssim"]["axial"] > 0.99
    with pytest.raises(ValueError, match="finite"):
        per_axis_metrics(ref, ref, float("inf"))


@pytest.mark.parametrize("scale", [1e-30, 1e25])
def test_ssim_of_very_small_or_large_values_is_the_same_score_without_runtime_warnings(scale):
    """Sixty-third session's audit: a reference of values near 1e-30 (a range whose squares underflow) or 1e25 (the
    volume's float32 squares overflow) printed skimage's multi-line RuntimeWarnings and gave the volume SSIM NaN.
    SSIM over a range R is the same number on values in units of R: scored so."""
    import warnings
    ref = _ref()
    x = ref + np.random.default_rng(1).normal(0, 0.05, ref.shape)
    want = per_axis_metrics(ref, x, 1.0)["ssim"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = per_axis_metrics(ref * scale, x * scale, scale)["ssim"]
    assert got == pytest.approx(want, rel=1e-4) and all(np.isfinite(v) for v in got.values())


def test_a_reconstruction_too_large_to_score_is_one_note_not_runtime_warnings():
    import warnings
    ref = _ref()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = per_axis_metrics(ref, ref * 1e30, 1.0)
    assert m["ssim"]["volume"] is None and np.isfinite(m["ssim"]["axial"])
    assert [n for n in m["notes"] if "SSIM" in n] == [
        "no volume SSIM: the reconstruction's values (up to 1e+30) are too large to score against a range of 1"]


def test_psnr_of_a_reconstruction_near_1e300_is_finite_with_one_note_and_no_warning():
    """Squared errors near 1e600 overflowed: numpy printed its RuntimeWarning (and the float32 cast of the volume
    SSIM another) and PSNR was -inf. Now the PSNR is the same number computed on scaled values, and SSIM's note is
    the one word said."""
    import warnings
    ref = _ref()
    x = ref.copy()
    x[0, 0, 0] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = per_axis_metrics(ref, x, 1.0)
        assert psnr(ref, np.full_like(ref, 1e300), 1.0) == pytest.approx(-6000, abs=0.01)
    assert all(np.isfinite(v) for v in m["psnr"].values()) and m["psnr"]["volume"] < -5000, m["psnr"]
    assert [n for n in m["notes"] if "1e+300" in n] == [
        "no axial and coronal and sagittal and volume SSIM: the reconstruction's values (up to 1e+300) are too large "
        "to score against a range of 1"]


def test_the_volume_ssim_of_a_large_volume_is_left_out_with_a_note(monkeypatch):
    """The 3D SSIM's filters need tens of bytes a voxel: above VOLUME_SSIM_MAX_VOXELS it is None and noted (a
    512 x 512 x 300 series needed about 10 GB after the solve), the planes' SSIM still given."""
    import medrecon.metrics as metrics
    monkeypatch.setattr(metrics, "VOLUME_SSIM_MAX_VOXELS", 100)
    ref = _ref()
    m = per_axis_metrics(ref, ref * 0.9, 1.0)
    assert m["ssim"]["volume"] is None and m["ssim"]["axial"] is not None
    assert any("no volume SSIM" in n and "memory" in n for n in m["notes"])


def test_each_planes_ssim_is_taken_over_that_planes_images():
    """Slices that are each close to the reference but shifted in value from slice to slice: the axial SSIM stays
    high, the coronal and sagittal ones (whose images cut across the slices) fall; each equals skimage's SSIM
    averaged over that plane's images (reference minimum as zero, the module's convention)."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    ref = np.broadcast_to(0.5 + 0.2 * rng.uniform(0.0, 1.0, (1, 24, 20)), (12, 24, 20)).copy()  # alike along z
    x = ref + rng.normal(0.0, 0.005, ref.shape) + 0.05 * rng.choice([-1.0, 1.0], 12)[:, None, None]  # axial 0.82
    m = per_axis_metrics(ref, x, data_range=1.0)
    low = ref.min()
    for plane, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        r, y = np.moveaxis(ref - low, axis, 0), np.moveaxis(x - low, axis, 0)
        expect = np.mean([structural_similarity(a, b, data_range=1.0, win_size=7) for a, b in zip(r, y)])
        assert m["ssim"][plane] == pytest.approx(expect, abs=1e-12)
    assert m["ssim"]["coronal"] < m["ssim"]["axial"] - 0.08 and m["ssim"]["sagittal"] < m["ssim"]["axial"] - 0.08


def test_psnr_and_ssim_refuse_other_shapes_and_a_range_that_is_not_positive():
    """psnr(ref, x[:1]) broadcast one slice against six and scored 3.87 dB; a range of 0 gave -inf with a numpy
    warning and -2 the score of +2. Both helpers refuse them as per_axis_metrics does."""
    from medrecon.metrics import psnr, ssim
    ref = _ref((6, 16, 12))
    x = ref + 0.05
    for other in (x[:1], x[0], x[:, :, :-1]):
        for score in (psnr, ssim):
            with pytest.raises(ValueError, match=r"one shape, got \(6, 16, 12\) and"):
                score(ref, other, 2.0)
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        for score in (psnr, ssim):
            with pytest.raises(ValueError, match="data range must be positive and finite"):
                score(ref[0], x[0], bad)
    nan = x.copy()
    nan[0, 0, 0] = np.nan  # psnr returned nan, without a word
    for score in (psnr, ssim):
        with pytest.raises(ValueError, match="NaN or infinite"):
            score(ref, nan, 2.0)
    assert psnr(ref, x, 2.0) == pytest.approx(10 * math.log10(2.0 ** 2 / 0.05 ** 2))


def test_complex_images_are_scored_on_their_magnitudes():
    """per_axis_metrics cast complex images to their real parts (numpy's ComplexWarning only): two images of one
    magnitude, one with its phase turned 90 degrees, scored 6 dB. Magnitudes are scored, as MR tools do."""
    import warnings
    ref = _ref()
    phase = np.exp(1j * np.random.default_rng(2).uniform(-np.pi, np.pi, ref.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning
        turned = per_axis_metrics(ref * phase, ref * phase * 1j, 1.0)
        scaled = per_axis_metrics(ref * phase, 0.9 * ref * phase * 1j, 1.0)
    assert all(v == PSNR_CAP for v in turned["psnr"].values())
    assert all(v == pytest.approx(1.0) for v in turned["ssim"].values())
    real = per_axis_metrics(ref, 0.9 * ref, 1.0)
    for name in ("psnr", "ssim"):
        assert scaled[name] == pytest.approx(real[name], rel=1e-9)
