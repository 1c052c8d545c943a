"""MRI: masks (exact acceleration, centre, seeds, Poisson-disc spacing, files), the Cartesian operator
(centred orthonormal FFT, per-slice and 3D masks, SENSE), coil-map estimation, least-squares SENSE and
ADMM-TV against zero-filled on a textured phantom simulated on a finer grid with noise."""
import itertools

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.solvers import admm_tv, cg_normal
from operators.mri import (KINDS, CartesianMRI, PerSliceOperator, estimate_coil_maps, fftc, ifftc, load_mask,
                           make_mask, mri_operator, poisson_disc, save_mask, synthetic_coil_maps, zero_filled)
from operator_registry import psnr, smooth_coil_maps, textured_phantom

ONE_D = [k for k in KINDS if k != "poisson2d"]


@pytest.mark.parametrize("kind", ONE_D)
@pytest.mark.parametrize("shape,acc,cf", [((64, 96), 4, 0.08), ((3, 40, 50), 8, 0.04), ((32, 33), 2.5, 0.1)])
def test_1d_masks_exact_acceleration_centre_and_shape(kind, shape, acc, cf):
    m = make_mask(kind, shape, acc, cf, seed=3)
    n = shape[-1]
    assert m.dtype == bool and m.shape == (1,) * (len(shape) - 1) + (n,)
    assert m.sum() == round(n / acc)
    n_c = round(n * cf)
    assert m.ravel()[n // 2 - n_c // 2: n // 2 - n_c // 2 + n_c].all() and m.ravel()[n // 2]


@pytest.mark.parametrize("kind", KINDS)
def test_masks_are_reproducible_from_the_seed(kind):
    shape = (12, 4, 40) if kind == "poisson2d" else (40, 64)
    a, b, c = (make_mask(kind, shape, 4, 0.1, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a, b) and a.sum() == c.sum()
    if kind != "equispaced1d":
        assert not np.array_equal(a, c)


def test_gaussian1d_is_denser_near_the_centre():
    m = np.mean([make_mask("gaussian1d", 256, 6, 0.04, seed=s) for s in range(20)], axis=0)
    centre = m[128 - 40: 128 + 40].mean()
    edges = np.r_[m[:60], m[-60:]].mean()
    assert centre > 3 * edges


def test_poisson2d_exact_count_centre_and_variable_density():
    shape = (48, 6, 64)
    m = make_mask("poisson2d", shape, 6, 0.1, seed=1)
    assert m.shape == (48, 1, 64) and m.sum() == round(48 * 64 / 6)
    plane = m[:, 0]
    assert plane[24 - 2: 24 + 3, 32 - 3: 32 + 3].all()  # round(4.8) x round(6.4) centre box
    r = np.hypot(*np.meshgrid(np.arange(48) - 24, np.arange(64) - 32, indexing="ij"))
    assert plane[r < 12].mean() > 1.5 * plane[r > 24].mean()


def test_poisson_disc_minimum_distance_property():
    rng = np.random.default_rng(0)
    exclude = np.zeros((40, 50), bool)
    exclude[18:22, 23:27] = True
    mask, radius = poisson_disc((40, 50), 300, rng, exclude=exclude)
    assert mask.sum() == 300 and not (mask & exclude).any()
    pts = np.argwhere(mask)
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    rmin = np.minimum(radius[tuple(pts.T)][:, None], radius[tuple(pts.T)][None, :])
    off = ~np.eye(len(pts), dtype=bool)
    assert (d[off] >= rmin[off] - 1e-9).all()
    assert radius.max() > 2.0, "the spacing binds at high frequencies, not a random pick"


def test_mask_errors_and_file_round_trip(tmp_path):
    with pytest.raises(InputError, match="center_fraction"):
        make_mask("uniform1d", 100, 16, 0.08)  # 6 lines allowed, centre needs 8
    with pytest.raises(InputError, match="kind"):
        make_mask("radial", 100, 4)
    with pytest.raises(InputError, match="poisson2d"):
        make_mask("poisson2d", (32, 32), 4)
    m = make_mask("poisson2d", (16, 3, 20), 3, 0.1, seed=5)
    path = save_mask(tmp_path / "mask.npz", m, kind="poisson2d", acceleration=3, seed=5)
    m2, meta = load_mask(path)
    assert np.array_equal(m, m2) and meta == {"kind": "poisson2d", "acceleration": 3, "seed": 5}
    with pytest.raises(InputError, match="does not exist"):
        load_mask(tmp_path / "missing.npz")


def test_centred_orthonormal_fft_matches_numpy():
    x = np.random.default_rng(0).standard_normal((2, 6, 7)) + 1j * np.random.default_rng(1).standard_normal((2, 6, 7))
    for nd in (2, 3):
        axes = tuple(range(-nd, 0))
        ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)
        k = fftc(torch.from_numpy(x), nd)
        assert np.allclose(k.numpy(), ref) and np.allclose(ifftc(k, nd).numpy(), x)
    # the DC coefficient sits at index n // 2
    assert np.argmax(np.abs(fftc(torch.ones(6, 7, dtype=torch.complex128), 2).numpy())) == 3 * 7 + 3
    # dims as a sequence of axes: the same transform as the count of last axes
    t = torch.from_numpy(x)
    assert torch.equal(fftc(t, (-2, -1)), fftc(t, 2)) and torch.equal(ifftc(t, (-3, -2, -1)), ifftc(t, 3))
    assert torch.allclose(fftc(t.transpose(0, 2), (1, 2)).transpose(0, 2), fftc(t, (-3, -2)))


def test_synthetic_coil_maps_are_normalised_smooth_and_grid_independent():
    maps = synthetic_coil_maps(6, (24, 32))
    assert maps.shape == (6, 24, 32) and maps.dtype == np.complex64
    # sum |S|^2 = 1 up to float32 rounding (a few ulps of 1)
    assert np.abs((np.abs(maps.astype(np.complex128)) ** 2).sum(0) - 1).max() < 8 * np.finfo(np.float32).eps
    # pixel centres: a 2x finer grid averaged over 2x2 blocks is close to the coarse grid
    fine = synthetic_coil_maps(6, (48, 64)).reshape(6, 24, 2, 32, 2).mean((2, 4))
    assert np.abs(fine - maps).max() < 0.02


def test_mri_operator_builder_layouts():
    z, c, h, w = 3, 2, 8, 10
    mask = make_mask("uniform1d", (h, w), 2, 0.2)
    maps = torch.from_numpy(np.stack([synthetic_coil_maps(c, (h, w)) * np.exp(1j * s) for s in range(z)]))
    x = torch.randn(z, h, w, dtype=torch.float64)
    # 2D, per-slice maps (Z, C, H, W): one operator per slice
    A = mri_operator((z, h, w), mask, kspace=torch.zeros(z, c, h, w, dtype=torch.complex64), coil_maps=maps)
    assert isinstance(A, PerSliceOperator) and A.in_shape == (z, h, w) and A.out_shape == (z, c, h, w)
    for k in range(z):
        assert torch.allclose(A(x)[k], CartesianMRI((h, w), mask, coil_maps=maps[k], real_input=True)(x[k]))
    # one slice with its own mask (1, 1, W), as measured single-slice k-space comes: the shapes stay (1, H, W)
    one = mri_operator((1, h, w), mask[None], kspace=torch.zeros(1, c, h, w, dtype=torch.complex64), coil_maps=maps[:1])
    assert one.adjoint(one(x[:1])).shape == (1, h, w)
    # 2D, shared maps (C, H, W): one (H, W) operator for all slices; single-coil k-space drops the maps
    B = mri_operator((z, h, w), mask, coil_maps=maps[0])
    assert isinstance(B, CartesianMRI) and B.out_shape == (c, h, w) and B.real_input
    S = mri_operator((z, h, w), mask, kspace=torch.zeros(z, h, w), coil_maps=maps[0], real_input=False)
    assert isinstance(S, CartesianMRI) and S.coil_maps is None and not S.real_input
    # multi-coil k-space without maps, or maps_from="estimate": estimate_coil_maps from the k-space
    k = fftc(maps * torch.rand(z, 1, h, w, generator=torch.Generator().manual_seed(0)), 2)
    for kw in ({}, {"coil_maps": maps, "maps_from": "estimate"}):
        E = mri_operator((z, h, w), mask, kspace=k, **kw)
        assert isinstance(E, PerSliceOperator)
        assert torch.equal(E.ops[1].coil_maps, estimate_coil_maps(k, ndim=2)[1])
    # 3D: maps (C, Y, X) are the same on every slice
    mask3 = make_mask("poisson2d", (z, h, w), 2, 0.25)
    D = mri_operator((z, h, w), mask3, kspace=torch.zeros(c, z, h, w), coil_maps=maps[0], three_d=True)
    assert D.in_shape == (z, h, w) and D.out_shape == (c, z, h, w)
    assert torch.equal(D.coil_maps[:, 2], maps[0])
    with pytest.raises(InputError, match="kspace"):
        mri_operator((z, h, w), mask, maps_from="estimate")
    with pytest.raises(InputError, match="image_shape"):
        mri_operator((h, w), mask3, three_d=True)


def test_operator_masks_zero_filled_and_per_slice_masks():
    x = torch.randn(3, 8, 10, dtype=torch.complex128)
    masks = np.stack([make_mask("uniform1d", (8, 10), 2, 0.2, seed=s) for s in range(3)])  # (3, 1, 10)
    A = CartesianMRI((8, 10), masks)
    y = A(x)
    for z in range(3):
        single = CartesianMRI((8, 10), masks[z])
        assert torch.allclose(y[z], single(x[z]))
        assert (y[z][:, ~masks[z][0]] == 0).all()
    assert torch.allclose(zero_filled(y, A), ifftc(y, 2))
    assert abs(A.acceleration - 2.0) < 1e-12
    with pytest.raises(InputError, match=r"mask differs by slice \(3 slices\), but the image has 2"):
        A(x[:2])  # a per-slice mask fixes the number of slices
    with pytest.raises(InputError, match="but the k-space has 2"):
        A.adjoint(y[:2])
    with pytest.raises(InputError, match="broadcast"):
        CartesianMRI((8, 10), np.ones((1, 9), bool))
    with pytest.raises(InputError, match="samples nothing"):
        CartesianMRI((8, 10), np.zeros((1, 10), bool))
    with pytest.raises(InputError, match="coil_maps"):
        CartesianMRI((8, 10), masks[0], coil_maps=torch.ones(2, 8, 9))


def test_3d_operator_samples_the_kz_kx_plane_with_full_readout():
    m = make_mask("poisson2d", (8, 6, 10), 3, 0.2, seed=2)
    A = CartesianMRI((8, 6, 10), m)
    x = torch.randn(8, 6, 10, dtype=torch.complex128)
    y = A(x)
    full = fftc(x, 3)
    assert torch.allclose(y, full * torch.from_numpy(m))
    sampled = torch.from_numpy(np.broadcast_to(m, (8, 6, 10)).copy())
    assert (y[~sampled] == 0).all() and sampled[:, :, 0].all(dim=1).eq(sampled[:, 0, 0]).all()


def test_coil_map_estimate_and_least_squares_sense():
    n = 64
    img = torch.from_numpy(textured_phantom(n, 1)[0]).double()
    true_maps = smooth_coil_maps(4, (n, n), seed=3)
    k = fftc(true_maps * img, 2)
    maps = estimate_coil_maps(k, calib_fraction=0.25)
    obj = torch.from_numpy(textured_phantom(n, 1)[0] > 0.15)
    assert float(((maps - true_maps).abs()[:, obj] ** 2).sum() / (true_maps.abs()[:, obj] ** 2).sum()) < 0.05
    mask = make_mask("equispaced1d", (n, n), 2, 0.1)
    for sens in (true_maps, maps):
        A = CartesianMRI((n, n), mask, coil_maps=sens)
        y = A(img)
        x = cg_normal(A, y, n_iter=60)
        zf = zero_filled(y, A)
        err = float((x.abs() - img)[obj].norm() / img[obj].norm())
        err_zf = float((zf.abs() - img)[obj].norm() / img[obj].norm())
        assert err < (1e-3 if sens is true_maps else 0.08) and err < err_zf / 4, (err, err_zf)


def test_admm_tv_beats_zero_filled_at_4x():
    nz, n = 4, 128
    fine = torch.from_numpy(textured_phantom(2 * n, nz)).double()
    truth = fine.reshape(nz, n, 2, n, 2).mean((2, 4)).numpy()
    k = fftc(fine.to(torch.complex128), 2)[..., n // 2: n // 2 + n, n // 2: n // 2 + n] * 0.5  # finer grid
    mask = make_mask("gaussian1d", (n, n), 4, 0.08, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = torch.complex(torch.randn(k.shape, generator=g, dtype=torch.float64),
                          torch.randn(k.shape, generator=g, dtype=torch.float64))
    y = (k + 0.05 * noise) * torch.from_numpy(mask)
    A = CartesianMRI((n, n), mask, real_input=True)
    p_zf = psnr(zero_filled(y, A).numpy(), truth)
    x = admm_tv(A, y, lam=0.01, rho=0.1, n_iter=40, axes=(0, 1, 2), n_cg=5)
    p_admm = psnr(x.numpy(), truth)
    assert p_admm >= p_zf + 3, (p_admm, p_zf)


@pytest.mark.gpu
@pytest.mark.parametrize("real_input,coils", list(itertools.product([False, True], [0, 3])))
def test_mri_cuda_matches_cpu(real_input, coils):
    maps = smooth_coil_maps(coils, (16, 20)) if coils else None
    A = CartesianMRI((16, 20), make_mask("gaussian1d", (16, 20), 3, 0.1), coil_maps=maps, real_input=real_input)
    x = torch.randn(2, 16, 20, dtype=torch.float32 if real_input else torch.complex64)
    y = A(x)
    yc = A(x.cuda())
    assert yc.is_cuda and torch.allclose(yc.cpu(), y, atol=1e-5)
    assert torch.allclose(A.adjoint(yc).cpu(), A.adjoint(y), atol=1e-5)


def test_estimated_coil_maps_do_not_amplify_the_background_noise():
    """Fully sampled noisy 8-coil data of a disc: the SENSE least-squares image with the estimated maps,
    sum_c conj(S_c) I_c / sum_c |S_c|^2, must keep the background noise at the level the coil images carry
    (about 1 % here; the root-sum-of-squares image's). Maps floored at 5 % of their top divided the noise by
    their small background norm: about 10x."""
    n, c = 64, 8
    yy, xx = np.mgrid[:n, :n] / (n / 2) - 1
    disc = torch.from_numpy(((xx ** 2 + yy ** 2) < 0.4).astype(np.float32))
    maps = torch.from_numpy(synthetic_coil_maps(c, (n, n)))
    g = torch.Generator().manual_seed(0)
    coil_images = maps * disc + 0.01 * torch.complex(torch.randn(c, n, n, generator=g), torch.randn(c, n, n, generator=g))
    k = fftc(coil_images[None], 2)
    est = estimate_coil_maps(k, ndim=2)[0]
    sense = (est.conj() * coil_images).sum(0) / (est.abs() ** 2).sum(0)
    rss = coil_images.abs().pow(2).sum(0).sqrt()
    background = (xx ** 2 + yy ** 2) > 0.8
    assert float(sense.abs()[background].std()) < 2 * float(rss[background].std())


def test_coil_maps_that_do_not_fit_the_kspace_are_a_one_line_error():
    mask = make_mask("uniform1d", (8, 10), 2, 0.2)
    k = torch.zeros(3, 4, 8, 10, dtype=torch.complex64)  # 3 slices, 4 coils
    for maps in (torch.ones(2, 8, 10), torch.ones(2, 4, 8, 10), torch.ones(4, 8, 12)):
        with pytest.raises(InputError, match="coil maps of shape .* do not fit k-space of shape"):
            mri_operator((3, 8, 10), mask, kspace=k, coil_maps=maps)


def test_poisson_mask_of_few_slices_keeps_its_centre():
    """round(4 * 0.08) = 0 rows: the centre box was empty and DC sampled only by chance (a zero-mean volume)."""
    for z in (2, 4, 6):
        m = make_mask("poisson2d", (z, 64, 64), 8.0, 0.08, seed=0)
        assert m[z // 2, 0, 32], z


def test_simulated_mri_lies_on_the_reconstruction_grid():
    """The band-limited reference (and the data) sat a quarter pixel off the grid at upsample 2 (a third at 3),
    against the input's geometry and the coil maps: fftc's origin is pixel n // 2 on either grid."""
    from medrecon.volume import Volume
    from pipelines.config import load_config
    from pipelines.simulation import simulate_mri
    yy, xx = np.mgrid[:32, :32].astype(float)
    blob = np.exp(-((yy - 13.0) ** 2 + (xx - 17.0) ** 2) / 8.0)
    vol = Volume(np.stack([blob] * 2).astype(np.float32), spacing=(1.0, 1.0, 3.0))
    for f in (2, 3):
        cfg = load_config("cs_mri_x4", ["noise.kind=none", f"simulation.upsample={f}"], check_files=False).resolved()
        ref = np.clip(simulate_mri(cfg, vol, 32, 1.0)[0].data[0], 0, None)
        centroid = ((ref * yy).sum() / ref.sum(), (ref * xx).sum() / ref.sum())
        assert np.allclose(centroid, (13.0, 17.0), atol=0.01), (f, centroid)
