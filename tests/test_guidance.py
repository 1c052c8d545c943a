"""The paper's slice-wise baselines (projection-type, MCG, DPS): data fit, exact manifold gradients, the
projection-vs-gradient comparison at heavy undersampling, chunk-bounded backpropagation, counters."""
import math

import pytest
import torch

from medrecon.linop import LinearOperator, MatrixOperator
from medrecon.priors.base import Denoiser, GaussianDenoiser, VESchedule
from medrecon.solvers.guidance import DPSSampler, MCGSampler, ProjectionSampler, poisson_weights

HW, N_PIX, Z = 16, 256, 16


# ---------------------------------------------------------------------------------------------------------
# 2D problem: Gaussian prior N(m, 0.5 I) per 16x16 slice, 96 orthonormal measurement rows, noise sd 0.05,
# 16 independent slices. The residual of a posterior sample is about the noise norm 0.05 sqrt(96) = 0.49
# (a projection fits it exactly); the prior alone leaves a residual of about sqrt(0.5 * 96) = 6.9.
# ---------------------------------------------------------------------------------------------------------
def _white_problem(m=96, noise=0.05):
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(N_PIX, m, generator=g, dtype=torch.float64))
    mat = q.T
    mean = torch.linspace(-1, 1, N_PIX, dtype=torch.float64).view(HW, HW)
    x_true = mean + math.sqrt(0.5) * torch.randn(Z, HW, HW, generator=g, dtype=torch.float64)
    y = x_true.reshape(Z, -1) @ mat.T + noise * torch.randn(Z, m, generator=g, dtype=torch.float64)
    prior = GaussianDenoiser(mean, 0.5, VESchedule(0.01, 50.0, 1000))
    return prior, MatrixOperator(mat.float(), (HW, HW), (m,)), y.float(), mat, noise * math.sqrt(m)


@pytest.mark.parametrize("cls,kw,nfe,bwd", [(ProjectionSampler, {}, 200, 0), (MCGSampler, {}, 200, 100),
                                            (DPSSampler, {"zeta": 0.3}, 100, 100)])
def test_residual_reaches_noise_level(cls, kw, nfe, bwd):
    prior, A, y, mat, noise_norm = _white_problem()
    solver = cls(prior, A, y, n_steps=100, chunk_size=4, seed=0, **kw)
    x = solver.run().double()
    res = (x.reshape(Z, -1) @ mat.T - y.double()).norm(dim=1)
    assert float(res.mean()) <= 1.5 * noise_norm, (float(res.mean()), noise_norm)   # measured 0.0 / 0.0 / 0.66x
    assert (solver.nfe, solver.backward_passes) == (nfe, bwd)


# ---------------------------------------------------------------------------------------------------------
# The manifold-constrained gradient G = grad_x sum_s ||y_s - A D(x_s, sigma)||^2_W against central finite
# differences of the same loss written out here (closed-form D), in float64, along random directions and
# coordinates; a quadratic loss, so the central difference is exact up to rounding. Both code paths:
# slice-wise operator (one VJP per chunk) and volume operator (whole-volume dL/dx0 first).
# ---------------------------------------------------------------------------------------------------------
class _VolumeMatrix(LinearOperator):
    """A dense matrix acting on the whole (Z, H, W) volume (not slice-wise)."""

    def __init__(self, mat, shape):
        super().__init__(shape, (mat.shape[0],))
        self.inner = MatrixOperator(mat, shape, (mat.shape[0],))

    def _forward(self, x):
        return self.inner._forward(x)

    def _adjoint(self, y):
        return self.inner._adjoint(y)


@pytest.mark.parametrize("path", ["slicewise", "volume", "poisson"])
def test_manifold_gradient_matches_finite_differences(path):
    g = torch.Generator().manual_seed(2)
    z, hw, m, sigma = 5, 8, 40, 0.7
    mean = torch.rand(hw, hw, generator=g, dtype=torch.float64)
    prior = GaussianDenoiser(mean, 0.3, VESchedule(0.01, 10.0, 1000))
    if path == "volume":
        mat = torch.randn(m * z, z * hw * hw, generator=g, dtype=torch.float64) / math.sqrt(m * z)
        A = _VolumeMatrix(mat, (z, hw, hw))
        y = torch.randn(m * z, generator=g, dtype=torch.float64)
    else:
        mat = torch.randn(m, hw * hw, generator=g, dtype=torch.float64) / math.sqrt(m)
        A = MatrixOperator(mat, (hw, hw), (m,))
        y = torch.randn(z, m, generator=g, dtype=torch.float64) + 3.0
    kw = dict(likelihood="poisson") if path == "poisson" else {}
    solver = DPSSampler(prior, A, y, n_steps=5, **kw)
    w = poisson_weights(y.float().double()) if path == "poisson" else torch.ones_like(y)
    y32 = y.float().double()                                  # the solver keeps y in float32

    def loss(x):
        a = 0.3 / (0.3 + sigma ** 2)
        x0 = a * x + (1 - a) * mean
        r = y32 - (x0.reshape(-1) @ mat.T if path == "volume" else x0.reshape(z, -1) @ mat.T)
        return float((w * r * r).sum())

    x = torch.randn(z, hw, hw, generator=g, dtype=torch.float64)
    x0, grad, norm = solver.tweedie(x, sigma, chunk_size=2)
    assert grad.dtype == torch.float64 and norm.shape == (z,)
    h = 1e-4
    for k in range(6):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        if k >= 3:                                            # coordinate directions
            v = torch.zeros_like(x)
            v.view(-1)[int(torch.randint(x.numel(), (1,), generator=g))] = 1.0
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        an = float((grad * v).sum())
        assert abs(fd - an) <= 1e-5 * max(abs(fd), 1e-3), (k, fd, an)
    assert solver.nfe_per_step == (2 if path == "volume" else 1)


# ---------------------------------------------------------------------------------------------------------
# Heavy undersampling with a correlated (smooth) Gaussian prior: 16 slices of 16x16 drawn from the prior
# (squared-exponential covariance, length 2.5 px), 16 random Gaussian measurements per slice (16x), noise
# sd 0.01. The denoiser D = m + C (C + sigma^2 I)^-1 (x - m) is plain torch (autograd works).
# Metric: RMSE to the ground truth over the volume (an exact posterior sampler: 0.248, the posterior mean:
# 0.164). Measured at 100 steps: projection 0.324, MCG 0.306, DPS (zeta 0.3) 0.258. The projection fixes the
# measured component without telling the null space (for a white prior the two decouple and it is exact;
# here they are correlated), the gradient through D moves both: projection-type is the worst.
# ---------------------------------------------------------------------------------------------------------
class _SmoothGaussian(Denoiser):
    name = "smooth-gaussian"

    def __init__(self, ell=2.5, var=0.1, mean=0.4):
        c = torch.arange(HW, dtype=torch.float64)
        p = torch.stack([t.flatten() for t in torch.meshgrid(c, c, indexing="ij")], 1)
        self.C = var * torch.exp(-torch.cdist(p, p) ** 2 / (2 * ell ** 2)) + 1e-6 * torch.eye(N_PIX, dtype=torch.float64)
        self.lam, self.U = torch.linalg.eigh(self.C)
        self.m, self.schedule, self.card = mean, VESchedule(0.01, 20.0, 1000), {}

    def _denoise(self, x, sigma):
        U, lam = self.U.to(x.dtype), self.lam.to(x.dtype)
        gain = lam[None] / (lam[None] + sigma.to(x.dtype)[:, None] ** 2)
        return self.m + (((x - self.m).flatten(1) @ U) * gain @ U.T).view_as(x)


def test_projection_type_worse_at_heavy_undersampling():
    prior = _SmoothGaussian()
    g = torch.Generator().manual_seed(0)
    x_true = prior.m + torch.randn(Z, N_PIX, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(prior.C).T
    mat = torch.randn(16, N_PIX, generator=g, dtype=torch.float64) / 4.0
    y = (x_true @ mat.T + 0.01 * torch.randn(Z, 16, generator=g, dtype=torch.float64)).float()
    A = MatrixOperator(mat.float(), (HW, HW), (16,))
    rmse = {}
    for cls, kw in [(ProjectionSampler, {}), (MCGSampler, {}), (DPSSampler, {"zeta": 0.3})]:
        x = cls(prior, A, y, n_steps=100, chunk_size=8, seed=0, **kw).run().double().reshape(Z, N_PIX)
        rmse[cls.__name__] = float((x - x_true).pow(2).mean().sqrt())
    assert rmse["ProjectionSampler"] > 1.03 * rmse["MCGSampler"], rmse
    assert rmse["ProjectionSampler"] > 1.15 * rmse["DPSSampler"], rmse


# ---------------------------------------------------------------------------------------------------------
# Memory bound and chunking: every grad-enabled network call sees at most chunk_size slices, the result does
# not depend on the chunk size, and seeds are reproducible.
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MCGSampler, DPSSampler])
def test_backward_only_through_one_chunk(cls):
    prior, A, y, _, _ = _white_problem()
    grad_batches = []

    class Recording(Denoiser):
        schedule, name = prior.schedule, "recording"

        def _denoise(self, x, sigma):
            if torch.is_grad_enabled() and x.requires_grad:
                grad_batches.append(x.shape[0])
            return prior._denoise(x, sigma)

    a = cls(Recording(), A, y, n_steps=10, chunk_size=3, seed=4).run()
    assert grad_batches and max(grad_batches) <= 3 and sum(grad_batches) == 10 * Z
    b = cls(prior, A, y, n_steps=10, chunk_size=7, seed=4).run()
    c = cls(prior, A, y, n_steps=10, chunk_size=7, seed=4).run()
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(b, c)   # float32 round-off only


@pytest.mark.parametrize("cls", [MCGSampler, DPSSampler])
def test_guided_samplers_take_a_mask_per_slice_with_chunks(cls):
    """A (Z, 1, W) mask fits only the whole stack: MCG and DPS applied it to chunks of 2 of 4 slices and crashed
    on tensor sizes; they now treat the operator as a volume's."""
    import numpy as np
    from operators.mri import CartesianMRI, make_mask
    masks = np.stack([make_mask("uniform1d", (16, 16), 4, 0.1, seed=s) for s in range(4)])
    A = CartesianMRI((16, 16), masks, real_input=True)
    assert A.per_slice
    x = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    y = A.forward(x)
    shared = CartesianMRI((16, 16), masks[0], real_input=True)  # the same mask once, or stacked per slice: the
    stacked = CartesianMRI((16, 16), np.stack([masks[0]] * 4), real_input=True)  # same step (norm per slice)
    norms = [cls(GaussianDenoiser(0.5, 0.1), op, op.forward(x), n_steps=2).data_gradient(x * 0.5)[1]
             for op in (shared, stacked)]
    assert norms[1].shape == (4,) and torch.allclose(norms[0], norms[1])
    fits = []
    for op in (A, CartesianMRI((16, 16), masks[0], real_input=True)):  # each slice's own lines, or one mask for all
        out = cls(GaussianDenoiser(0.5, 0.1), op, op.forward(x), n_steps=20, chunk_size=2, seed=1).run()
        fits.append(float((op.forward(out) - op.forward(x)).norm() / op.forward(x).norm()))
    assert fits[0] <= 1.2 * fits[1] + 1e-3, fits  # fitted as well as with one mask (measured 0 MCG, 0.118 / 0.129 DPS)


# ---------------------------------------------------------------------------------------------------------
# MRI: for an orthonormal masked FFT the projection with lambda_proj = 1 and one CG step replaces the
# sampled k-space of x by the measurement (Song et al.'s k-space step), exactly. For a real image this
# needs a mask symmetric under k -> -k (then A^H A = Re F^H M F is a projector); the test builds one.
# ---------------------------------------------------------------------------------------------------------
class _MaskedFFT(LinearOperator):
    def __init__(self, mask):
        super().__init__(mask.shape, mask.shape)
        self.mask = mask

    def _forward(self, x):
        return torch.fft.fft2(x.to(torch.complex64), norm="ortho") * self.mask

    def _adjoint(self, k):
        return torch.fft.ifft2(k * self.mask, norm="ortho").real


def test_guided_samplers_honour_bounds_and_fit_the_weighted_residual():
    """nonneg/clip hold for the result without a z-TV step (the default lam 0), and the projection fits
    W^1/2 (A x - y) as the gradient does (the weights changed nothing there)."""
    prior, A, y, _, _ = _white_problem()
    for cls in (ProjectionSampler, MCGSampler, DPSSampler):
        out = cls(prior, A, y, n_steps=20, clip=(-0.5, 0.5), seed=0).run()
        assert float(out.min()) >= -0.5 and float(out.max()) <= 0.5, cls.__name__
    g = torch.Generator().manual_seed(2)
    mat = torch.randn(400, N_PIX, generator=g)  # more measurements than pixels: the weights decide the fit
    A2 = MatrixOperator(mat, (HW, HW), (400,))
    y2 = torch.randn(Z, 400, generator=g)
    w = torch.rand(y2.shape, generator=g) * 9.9 + 0.1
    x0 = torch.zeros(Z, HW, HW)
    for weights, fits in ((w, True), (None, False)):
        s = ProjectionSampler(prior, A2, y2, n_steps=2, seed=0, weights=weights, n_cg=300)
        x = s.project(x0, 0.0, torch.Generator())
        grad = A2.adjoint(w * (A2.forward(x) - y2))  # the weighted normal equations: 0 at the PWLS solution
        assert (float(grad.norm() / A2.adjoint(w * y2).norm()) < 1e-3) == fits


def test_projection_replaces_sampled_kspace():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(HW, HW, generator=g) < 0.15
    mask = mask | torch.roll(torch.flip(mask, (0, 1)), (1, 1), (0, 1))     # index i -> (-i) mod HW
    A = _MaskedFFT(mask)
    y = A.forward(torch.rand(3, HW, HW, generator=g))
    solver = ProjectionSampler(GaussianDenoiser(0.5, 0.1), A, y, n_cg=1, lambda_proj=1.0)
    x = torch.rand(3, HW, HW, generator=g)
    expected = torch.fft.ifft2(torch.where(mask, y, torch.fft.fft2(x, norm="ortho")), norm="ortho").real
    assert torch.allclose(solver.project(x, 0.0, g), expected, atol=1e-5)
    half = ProjectionSampler(GaussianDenoiser(0.5, 0.1), A, y, n_cg=1, lambda_proj=0.5).project(x, 0.0, g)
    assert torch.allclose(half, 0.5 * (x + expected), atol=1e-5)


def test_options_and_defaults():
    prior, A, y, _, _ = _white_problem()
    for cls in (ProjectionSampler, MCGSampler, DPSSampler):
        s = cls(prior, A, y)                    # no z-TV by default, so no rho needed
        assert s.n_steps == cls.default_steps == 1000 and s.lam == 0.0 and not s.dc.uses_tv
        assert s.dc.n_cg == cls.default_n_cg == 5
        with pytest.raises(ValueError, match="rho"):
            cls(prior, A, y, lam=0.05)          # z-TV needs an explicit ADMM penalty
    assert DPSSampler(prior, A, y).snr == 0.0 and MCGSampler(prior, A, y).snr == 0.16
    with pytest.raises(ValueError, match=r"lambda_proj must lie in \[0, 1\], got 1.5"):
        ProjectionSampler(prior, A, y, lambda_proj=1.5)
    with pytest.raises(ValueError, match="likelihood must be 'gaussian' or 'poisson'"):
        DPSSampler(prior, A, y, likelihood="laplace")
    # z-TV after the guided step (the shared ADMM step, lam > 0): its state is used
    s = MCGSampler(prior, A, y, lam=0.05, rho=1.0, n_steps=3, chunk_size=8)
    st = s.init_state()
    for _ in range(3):
        s.step(st)
    assert s.dc.uses_tv and float(st.admm.u.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------------------
# Pipeline dispatch: solver.name = projection | mcg | dps (and DPS's Poisson likelihood on CT) through
# pipelines.problem.Problem.solve on a tiny simulated sparse-view CT case, Gaussian prior. Asserted: the counters
# (steps 6: projection/mcg 2 evaluations per step with the corrector, 1 backward for mcg/dps) and that the
# data residual ||A x - y|| drops below that of the prior mean (measured ratios: projection and mcg 0.40, dps
# 0.82 with zeta 0.5: its normalised step moves only ~2 zeta per step, and 6 steps is very few).
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,extra,nfe,bwd", [("projection", [], 12, 0), ("mcg", ["solver.zeta=0.5"], 12, 6),
                                                ("dps", ["solver.zeta=0.5"], 6, 6),
                                                ("dps", ["solver.zeta=0.5", "solver.likelihood=poisson"], 6, 6)])
def test_pipeline_dispatch(name, extra, nfe, bwd):
    from pipelines.config import load_config
    from pipelines.phantoms import ct_phantom
    from pipelines.problem import Problem
    cfg = load_config("sparse_view_ct_8", ["ct.image_size=32", f"solver.name={name}", "solver.steps=6",
                                           "noise.kind=poisson"] + extra, check_files=False).resolved()
    assert cfg.solver.admm.lam == 0.0 and cfg.solver.n_cg == 5      # the papers' baselines: no z-TV unless asked
    p = Problem.build(cfg, ct_phantom((3, 32, 32), seed=1), prior=GaussianDenoiser(0.5, 0.1))
    sol = p.solve()
    x, A, y = sol.x, p.operator, p.data
    assert (sol.nfe_per_slice, sol.backward_per_slice, sol.std) == (nfe, bwd, None)
    assert torch.isfinite(x).all()
    base = float((A.forward(torch.full_like(x, 0.5)) - y).norm())
    assert float((A.forward(x) - y).norm()) < (0.9 if name == "dps" else 0.5) * base


class _CudaGaussian(GaussianDenoiser):
    @property
    def device(self):
        return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kw", [(ProjectionSampler, {}), (MCGSampler, {}), (DPSSampler, {"zeta": 0.3})])
def test_residual_reaches_noise_level_cuda(cls, kw):
    prior, A, y, mat, noise_norm = _white_problem()
    prior = _CudaGaussian(prior.mean, 0.5, prior.schedule)
    A = MatrixOperator(A.matrix.cuda(), A.in_shape, A.out_shape)
    x = cls(prior, A, y.cuda(), n_steps=100, chunk_size=4, seed=0, **kw).run().double().cpu()
    res = (x.reshape(Z, -1) @ mat.T - y.double()).norm(dim=1)
    assert float(res.mean()) <= 1.5 * noise_norm


def test_pipeline_passes_the_step_size_and_the_warm_starts_settings(monkeypatch):
    """solver.zeta reaches MCG's and DPS's step size, and the warm start is 3D ADMM-TV with the configured lam,
    rho = 10 lam and iteration count (the defaults of the classes and the config are alike, so a setting lost on
    its way would go unseen in the results)."""
    import pipelines.problem as problem_module
    from medrecon.solvers.guidance import GuidedSampler
    from pipelines.config import load_config
    from pipelines.phantoms import ct_phantom
    from pipelines.problem import Problem

    steps, calls = [], []
    init, admm = GuidedSampler.__init__, problem_module.admm_tv

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        steps.append(self.step_scale)

    monkeypatch.setattr(GuidedSampler, "__init__", spy_init)
    monkeypatch.setattr(problem_module, "admm_tv", lambda *a, **k: calls.append((a[2:5], k["axes"])) or admm(*a, **k))
    vol = ct_phantom((2, 32, 32), seed=1)
    for name in ("mcg", "dps"):
        cfg = load_config("sparse_view_ct_8", ["ct.image_size=32", f"solver.name={name}", "solver.steps=2",
                                               "solver.zeta=0.3"], check_files=False).resolved()
        Problem.build(cfg, vol, prior=GaussianDenoiser(0.5, 0.1)).solve()
    assert steps == [0.3, 0.3]
    cfg = load_config("sparse_view_ct_8", ["ct.image_size=32", "solver.steps=2", "solver.coarse_above=0",
                                           "solver.warm_start={method: admm_tv, start_sigma: 0.5, lam: 0.07, iters: 7}"],
                      check_files=False).resolved()
    Problem.build(cfg, vol, prior=GaussianDenoiser(0.5, 0.1)).solve()
    assert calls == [((0.07, pytest.approx(0.7), 7), (0, 1, 2))]


def test_the_guided_samplers_backward_pass_runs_in_the_fp32_of_the_forward(monkeypatch):
    """MCG / DPS differentiate through the network after its call returned: the backward convolutions ran in
    torch's default TF32 on CUDA while the forward ran in fp32. The gradient is taken inside exact_fp32 too
    (every autograd.grad call is checked to run while the spy context is open)."""
    from contextlib import contextmanager

    import medrecon.solvers.guidance as guidance
    inside, seen = [False], []

    @contextmanager
    def spy(device_type):
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    grad = torch.autograd.grad

    def checked_grad(*a, **k):
        seen.append(inside[0])
        return grad(*a, **k)

    monkeypatch.setattr(guidance, "exact_fp32", spy)
    monkeypatch.setattr(torch.autograd, "grad", checked_grad)
    prior, A, y, _, _ = _white_problem()
    MCGSampler(prior, A, y, n_steps=3, chunk_size=4, seed=0).run()
    assert seen and all(seen)
