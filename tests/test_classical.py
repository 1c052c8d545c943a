"""Classical solvers: exact least-squares solutions, SIRT convergence, ADMM-TV against closed forms."""
import pytest
import torch

from medrecon.linop import FiniteDifference, Identity, MatrixOperator
from medrecon.solvers import ADMMTV, admm_tv, axis_weights, cg_normal, cgls, sirt
from operators.ct import ParallelBeamGeometry, SliceProjector
from operators.mri import CartesianMRI, make_mask

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _lstsq_problem(device, dtype=torch.float64, m=30, n=12, batch=(3,)):
    g = torch.Generator().manual_seed(0)
    M = torch.randn(m, n, generator=g, dtype=dtype)
    y = torch.randn(*batch, m, generator=g, dtype=dtype)
    ref = torch.linalg.lstsq(M, y.T).solution.T
    return MatrixOperator(M.to(device)), y.to(device), ref.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_cgls_and_cg_normal_reach_the_least_squares_solution(device):
    A, y, ref = _lstsq_problem(device)
    for x in (cgls(A, y, n_iter=40), cg_normal(A, y, n_iter=40), cgls(A, y, x0=torch.ones_like(ref), n_iter=40)):
        assert x.device.type == device
        assert torch.allclose(x, ref, atol=1e-9)
    x = cgls(A, y, n_iter=200, tol=1e-3)  # stops once ||A^T r|| <= tol ||A^T y||, before converging fully
    grad = A.adjoint(y - A(x)).norm() / A.adjoint(y).norm()
    assert 1e-9 < float(grad) <= 1e-3


def test_cg_stops_where_the_residual_lies_in_the_null_space():
    """A singular PSD system: once the residual's range part is solved, a further step would divide by p.Mp ~ 0
    (the breakdown test, relative to M's size measured at the first step, stops it; x went to 1e17 without)."""
    from medrecon.solvers.cg import conjugate_gradient
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    m = q @ torch.diag(torch.tensor([1.0, 2, 3, 4, 0, 0], dtype=torch.float64)) @ q.T
    x = conjugate_gradient(lambda v: m @ v, torch.randn(6, generator=g, dtype=torch.float64),
                           torch.zeros(6, dtype=torch.float64), 30)
    assert float(x.abs().max()) < 1e3


@pytest.mark.parametrize("scale", [1e-9, 1e6])
def test_cg_solvers_do_not_depend_on_the_operator_scale(scale):
    """The breakdown test is relative to the operator's size: with A of norm about 1e-8 the absolute one took the
    first step for rounding noise and returned x0 (relative error 1.0)."""
    A, y, ref = _lstsq_problem("cpu")
    A = MatrixOperator(A.matrix * scale)
    for x in (cgls(A, y, n_iter=40), cg_normal(A, y, n_iter=40)):
        assert torch.allclose(x * scale, ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("real_input", [True, False])
def test_cgls_stays_converged_on_a_masked_fft_in_float32(real_input):
    """A^H A a projector: converged after a few steps, then both gamma and ||A p||^2 are float32 rounding noise;
    their ratio sent x to 5e6 at the default 50 steps (-106 dB on a CS-MRI run)."""
    torch.manual_seed(0)
    x = torch.rand(4, 64, 64)
    A = CartesianMRI((64, 64), make_mask("uniform1d", (64, 64), 4, 0.08, 0), real_input=real_input)
    y = A.forward(x if real_input else x.to(torch.complex64))
    y = y + 0.01 * torch.randn_like(y) * A.mask
    five, fifty = (cgls(A, y, n_iter=n) for n in (5, 50))
    assert float((fifty - five).abs().max()) < 1e-3 * float(five.abs().max())


def test_cg_normal_tikhonov_matches_closed_form():
    A, y, _ = _lstsq_problem("cpu")
    lam = 0.7
    M = A.matrix
    ref = torch.linalg.solve(M.T @ M + lam * torch.eye(M.shape[1], dtype=M.dtype), M.T @ y.T).T
    assert torch.allclose(cg_normal(A, y, n_iter=40, lam=lam), ref, atol=1e-9)


def test_least_squares_sense_on_complex_data_in_float32():
    mask = make_mask("uniform1d", (16, 16), 1, 0.0)  # fully sampled: LS solution is the image itself
    A = CartesianMRI((16, 16), mask)
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    rec = cg_normal(A, A(x), n_iter=3)
    assert rec.dtype == torch.complex64 and torch.allclose(rec, x, atol=1e-5)


def test_sirt_converges_on_consistent_ct_data_and_respects_nonnegativity():
    g = ParallelBeamGeometry.sparse_view(24, 30)
    A = SliceProjector(g)
    x_true = torch.zeros(2, 24, 24, dtype=torch.float64)
    x_true[:, 6:16, 8:18] = 1.0
    y = A(x_true)
    res = [float((A(sirt(A, y, n_iter=k)) - y).norm() / y.norm()) for k in (5, 50, 300)]
    assert res[0] > res[1] > res[2] and res[2] < 0.01
    x = sirt(A, y - 0.5 * y.mean(), n_iter=30, nonneg=True)
    assert float(x.min()) >= 0
    with pytest.raises(TypeError, match="SIRT is for real, non-negative operators"):
        sirt(CartesianMRI((4, 4), torch.ones(4, 4, dtype=torch.bool)), torch.zeros(4, 4, dtype=torch.complex64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("boundary,factor", [("neumann", 1), ("periodic", 2)])
def test_admm_tv_two_slice_closed_form(device, boundary, factor):
    """A = I on two slices: min 1/2|x-y|^2 + lam*k*|x2 - x1| has a closed form (k = 1 Neumann, 2 periodic):
    if |y2 - y1| > 2 k lam both move k*lam towards each other, otherwise both become the mean."""
    lam = 0.1
    y = torch.tensor([[[0.0, 1.0]], [[0.5, 1.05]]], dtype=torch.float64, device=device)  # (Z=2, 1, 2)
    x = admm_tv(Identity((2, 1, 2)), y, lam=lam, rho=1.0, n_iter=300, axes=(0,), boundary=boundary, n_cg=2)
    d = y[1] - y[0]
    shift = torch.where(d.abs() > 2 * factor * lam, factor * lam * torch.sign(d), d / 2)
    ref = torch.stack([y[0] + shift, y[1] - shift])
    assert torch.allclose(x, ref, atol=1e-6), (x, ref)


@pytest.mark.parametrize("lam_z", [0.0, 0.2])
def test_per_axis_tv_weights(lam_z):
    """A = I, two identical slices that differ only along x: z-TV has nothing to do whatever its weight, and the x
    pair moves lam_x towards each other (|y2 - y1| > 2 lam_x): the in-plane weight, not z's."""
    lam_x = 0.05
    y = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]], dtype=torch.float64)  # (Z=2, 1, 2)
    axes, lams = axis_weights((lam_z, lam_x, lam_x))
    assert axes == ((0, 1, 2) if lam_z else (1, 2)) and lams == ((lam_z,) if lam_z else ()) + (lam_x, lam_x)
    D = FiniteDifference(y.shape, axes)
    prob = ADMMTV(Identity(y.shape), y, D, lams, rho=1.0, n_cg=2)
    x = prob.solve(y.clone(), 300)
    assert torch.allclose(x, torch.tensor([[[lam_x, 1 - lam_x]]] * 2, dtype=torch.float64), atol=1e-6)
    tv = lam_z * FiniteDifference(y.shape, (0,)).forward(x).abs().sum() + \
        lam_x * FiniteDifference(y.shape, (1, 2)).forward(x).abs().sum()
    assert prob.objective(x) == pytest.approx(0.5 * float(((x - y) ** 2).sum()) + float(tv))
    assert axis_weights((0, 0, 0)) == ((), ())
    with pytest.raises(ValueError, match="2 TV weights for the 3 axes of D"):
        ADMMTV(Identity(y.shape), y, FiniteDifference(y.shape, (0, 1, 2)), (0.1, 0.2), rho=1.0)


def test_per_axis_values_are_one_tensor_per_dtype_and_device_not_one_per_call():
    """The CG operator asks for the per-axis penalty every iteration: the tensor is made once per dtype and device
    (on a GPU each new one was a host-to-device copy), shaped to broadcast along D's axis dimension; equal values
    stay a number."""
    y = torch.rand((3, 4, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = FiniteDifference(y.shape, (0, 1, 2))
    prob = ADMMTV(Identity(y.shape), y, D, (0.05, 0.02, 0.02), rho=(1.0, 0.3, 0.3))
    v = D.forward(y)
    rho = prob._per_axis(v, prob.rhos)
    assert rho is prob._per_axis(v, prob.rhos)
    assert rho.shape == (3, 1, 1, 1) and rho.dtype == torch.float64 and rho.flatten().tolist() == [1.0, 0.3, 0.3]
    assert prob._per_axis(v.float(), prob.rhos).dtype == torch.float32  # another dtype: its own tensor
    assert prob._per_axis(v, (0.5, 0.5, 0.5)) == 0.5


def test_per_axis_admm_penalties_split_differently_and_reach_the_same_minimiser():
    """rho per axis of D (the samplers' in-plane penalty, ``rho_xy``): TV denoising is strongly convex, so ADMM with
    a shared rho and with (rho_z, rho_xy, rho_xy) reach the one minimiser, while their first steps differ (the
    per-axis penalty is used, not dropped)."""
    y = torch.rand((3, 4, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = FiniteDifference(y.shape, (0, 1, 2))
    lams = (0.05, 0.02, 0.02)
    shared, split = (ADMMTV(Identity(y.shape), y, D, lams, rho=r, n_cg=3) for r in (1.0, (1.0, 0.3, 0.3)))
    first = [p.step(y.clone(), p.init_state(y)) for p in (shared, split)]
    assert (first[0] - first[1]).abs().max() > 1e-3
    x_shared, x_split = shared.solve(y.clone(), 3000), split.solve(y.clone(), 3000)
    assert torch.allclose(x_shared, x_split, atol=1e-6), (x_shared - x_split).abs().max()
    assert split.objective(x_split) == pytest.approx(shared.objective(x_shared), rel=1e-9)
    with pytest.raises(ValueError, match="2 ADMM penalties for the 3 axes of D"):
        ADMMTV(Identity(y.shape), y, D, lams, rho=(1.0, 0.5))
    with pytest.raises(ValueError, match="rho > 0"):
        ADMMTV(Identity(y.shape), y, D, lams, rho=(1.0, 0.0, 1.0))


def test_admm_tv_without_tv_is_least_squares_and_runs_slice_wise_ct():
    A, y, ref = _lstsq_problem("cpu", batch=(4,))
    x = admm_tv(A, y, lam=0.0, rho=1.0, n_iter=30, n_cg=5)
    assert torch.allclose(x, ref, atol=1e-8)
    g = ParallelBeamGeometry.sparse_view(16, 6)
    P = SliceProjector(g)
    vol = torch.zeros(5, 16, 16)
    vol[:, 4:12, 4:12] = 1.0
    seen = []
    x = admm_tv(P, P(vol), lam=0.01, rho=0.5, n_iter=30, axes=(0,), nonneg=True, callback=lambda k, xk: seen.append(k))
    assert x.shape == vol.shape and x.dtype == torch.float32 and seen == list(range(30))
    assert float(x.min()) >= 0 and float((x - vol).norm() / vol.norm()) < 0.3
    D = FiniteDifference((5, 16, 16), (0,))
    assert float(D.forward(x).abs().sum()) < 1e-2 * float(x.abs().sum())  # z-TV keeps identical slices alike


def test_admm_tv_takes_a_numpy_or_torch_scalar_weight():
    import numpy as np
    y = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = admm_tv(Identity((3, 8, 8)), y, 0.05, 0.5, 5, axes=(0,))
    for lam in (np.float32(0.05), torch.tensor(0.05)):
        assert torch.allclose(admm_tv(Identity((3, 8, 8)), y, lam, 0.5, 5, axes=(0,)), ref)


def test_cg_per_slice_takes_each_slices_own_steps_and_the_samplers_data_step_uses_it():
    """One CG system for a stack of slices gives every slice the same step length, set by all of them: with z-TV
    off (the slice-wise samplers, projection/MCG/DPS) slice 0 moved by up to 107 HU in one step when the other
    slices' data changed. Per slice, its result is CG on that slice alone."""
    from medrecon.solvers.admm import ADMMTV
    from medrecon.solvers.cg import conjugate_gradient
    from operators.ct import ParallelBeamGeometry, SliceProjector

    A = SliceProjector(ParallelBeamGeometry.sparse_view(24, 6))
    g = torch.Generator().manual_seed(0)
    x_true = torch.rand(3, 24, 24, generator=g, dtype=torch.float64)
    y = A.forward(x_true)
    per = conjugate_gradient(A.normal, A.adjoint(y), torch.zeros_like(x_true), 3, system_dims=2)
    for k in range(3):
        alone = conjugate_gradient(A.normal, A.adjoint(y[k]), torch.zeros_like(x_true[k]), 3)
        torch.testing.assert_close(per[k], alone, rtol=1e-10, atol=1e-12)
    y2 = y.clone()  # the other slices' data replaced by those of a much rougher image
    y2[1:] = A.forward(torch.randn(2, 24, 24, generator=g, dtype=torch.float64) * 5)
    step = [ADMMTV(A, yy, None, 0.0, 1.0, n_cg=1).step(torch.zeros_like(x_true), None)[0] for yy in (y, y2)]
    torch.testing.assert_close(step[0], step[1])
    joint = [conjugate_gradient(A.normal, A.adjoint(yy), torch.zeros_like(x_true), 1)[0] for yy in (y, y2)]
    assert (joint[0] - joint[1]).abs().max() > 1e-3 * joint[0].abs().max()  # what one system did
    from medrecon.linop import FiniteDifference
    inplane = FiniteDifference(tuple(x_true.shape), axes=(1, 2))  # in-plane TV couples no slices either
    step = [ADMMTV(A, yy, inplane, 0.1, 1.0, n_cg=2).step(torch.zeros_like(x_true), ADMMTV(A, yy, inplane, 0.1, 1.0)
                                                          .init_state(torch.zeros_like(x_true)))[0] for yy in (y, y2)]
    torch.testing.assert_close(step[0], step[1])
    bad = A.adjoint(y).clone()
    bad[1] = float("nan")  # a slice with NaN data stays its own: the others finite, as CG on each alone
    out = conjugate_gradient(A.normal, bad, torch.zeros_like(x_true), 3, system_dims=2)
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_cgls_per_slice_is_cgls_on_each_slice_alone():
    """The classical CGLS ran one problem for the stack: a slice moved by up to 27 HU at 50 steps when only the
    other slices' data changed. Per slice (the pipelines' call for a slice-wise operator) it is each slice's own."""
    from medrecon.solvers import cgls
    from operators.ct import ParallelBeamGeometry, SliceProjector
    from operators.mri import CartesianMRI, make_mask

    g = torch.Generator().manual_seed(3)
    for A, x_true in ((SliceProjector(ParallelBeamGeometry.sparse_view(20, 5)),
                       torch.rand(3, 20, 20, generator=g, dtype=torch.float64)),
                      (CartesianMRI((12, 12), make_mask("uniform1d", (12, 12), 3, 0.2)),
                       torch.rand(3, 12, 12, generator=g, dtype=torch.float64).to(torch.complex128))):
        y = A.forward(x_true)
        per = cgls(A, y, n_iter=7, per_slice=True)
        for k in range(3):
            torch.testing.assert_close(per[k], cgls(A, y[k], n_iter=7), rtol=1e-9, atol=1e-11)
