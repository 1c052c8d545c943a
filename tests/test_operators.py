"""The shared property suite, applied to every operator of tests/operator_registry.py.

Linearity, adjointness |<Ax,y> - <x,A^T y>| / (||Ax|| ||y||), the normal operator against a dense
matrix, the power-iteration norm against the dense matrix's largest singular value, dtype handling;
float64 and float32; CPU always and CUDA when present (marked gpu).
"""
import math

import pytest
import torch

from medrecon.linop import inner
from operator_registry import REGISTRY
from operators.mri import PerSliceOperator

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TOL_ADJ = {torch.float64: 1e-6, torch.float32: 1e-4}
TOL_LIN = {torch.float64: 1e-12, torch.float32: 1e-5}
COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
_DENSE: dict = {}


def _rand(shape, dtype, is_complex, g, device):
    t = torch.randn(*shape, dtype=COMPLEX[dtype] if is_complex else dtype, generator=g)
    return t.to(device)


def _setup(name):
    op, batch, cplx_in = REGISTRY[name]()
    return op, batch, cplx_in, _out_is_complex(op, batch, cplx_in)


def _out_is_complex(op, batch, cplx_in):
    x = torch.zeros(*batch, *op.in_shape, dtype=COMPLEX[torch.float64] if cplx_in else torch.float64)
    return op.forward(x).is_complex()


def dense(name):
    """The operator as a real matrix (complex numbers as interleaved (re, im) pairs), float64 on CPU."""
    if name not in _DENSE:
        op, batch, cplx_in, _ = _setup(name)
        n = math.prod(batch) * math.prod(op.in_shape)
        eye = torch.eye(n, dtype=torch.float64).reshape(n, *batch, *op.in_shape)
        basis = torch.stack([eye, 1j * eye], 1).reshape(2 * n, *eye.shape[1:]) if cplx_in else eye
        out = op.forward(basis)
        out = torch.view_as_real(out) if out.is_complex() else out
        _DENSE[name] = out.reshape(basis.shape[0], -1).T
    return _DENSE[name]


def _real_vec(t):
    return (torch.view_as_real(t) if t.is_complex() else t).reshape(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_linearity_adjointness_dtype(name, dtype, device):
    op, batch, cplx_in, cplx_out = _setup(name)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (_rand((*batch, *op.in_shape), dtype, cplx_in, g, device) for _ in range(2))
    y = _rand((*batch, *op.out_shape), dtype, cplx_out, g, device)
    a, b = 1.7, -0.3
    lhs, rhs = op.forward(a * x1 + b * x2), a * op.forward(x1) + b * op.forward(x2)
    assert float((lhs - rhs).abs().max() / rhs.abs().max()) < TOL_LIN[dtype]
    ax, aty = op.forward(x1), op.adjoint(y)
    assert ax.shape == (*batch, *op.out_shape) and aty.shape == (*batch, *op.in_shape)
    assert ax.device.type == device and aty.device.type == device
    assert ax.real.dtype == dtype and aty.real.dtype == dtype, "operators keep the data's precision"
    assert aty.is_complex() == cplx_in
    gap = abs(float(inner(ax, y) - inner(x1, aty))) / float(ax.norm() * y.norm())
    assert gap < TOL_ADJ[dtype], f"adjoint mismatch {gap:.2e}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_normal_and_norm_against_dense_matrix(name):
    op, batch, cplx_in, _ = _setup(name)
    M = dense(name)
    g = torch.Generator().manual_seed(1)
    x = _rand((*batch, *op.in_shape), torch.float64, cplx_in, g, "cpu")
    ref = M.T @ (M @ _real_vec(x))
    assert torch.allclose(_real_vec(op.normal(x)), ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    assert torch.allclose(_real_vec(op.adjoint(op.forward(x))), ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    sigma = float(torch.linalg.matrix_norm(M, 2))
    est = op.norm(n_iter=300, batch=batch)
    assert abs(est / sigma - 1) < 0.01, f"norm estimate {est:.5g} vs SVD {sigma:.5g}"


def _fully_sampled(op):
    """The same MRI operator (per slice: each slice's) with every k-space point sampled."""
    if isinstance(op, PerSliceOperator):
        return PerSliceOperator([_fully_sampled(o) for o in op.ops])
    return type(op)(op.in_shape, torch.ones(op.kspace_shape, dtype=torch.bool), coil_maps=op.coil_maps,
                    real_input=op.real_input, kspace_shape=op.kspace_shape)


@pytest.mark.parametrize("name", [n for n in sorted(REGISTRY) if n.startswith("mri")])
def test_mri_full_mask_is_unitary_with_normalised_maps(name):
    """Analytic norms: with every k-space point sampled, A^H A = I (one coil, or maps with sum |S|^2 = 1)."""
    op, batch, cplx_in, _ = _setup(name)
    full = _fully_sampled(op)
    x = _rand((*batch, *op.in_shape), torch.float64, cplx_in, torch.Generator().manual_seed(2), "cpu")
    assert torch.allclose(full.normal(x), x, atol=1e-12)
    assert abs(full.norm(batch=batch) - 1) < 1e-6
    assert op.norm(n_iter=300, batch=batch) <= 1 + 1e-9


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_numpy_array_is_refused_naming_the_torch_tensor_to_give(name):
    """SliceProjector.forward(array) and CartesianMRI.forward(array) failed inside with "'numpy.ndarray' object has
    no attribute 'is_complex'"; every operator says what to pass."""
    op, batch, cplx_in, _ = _setup(name)
    x = torch.zeros(*batch, *op.in_shape, dtype=torch.complex128 if cplx_in else torch.float64)
    y = op.forward(x)
    for call, t, what in ((op.forward, x, "input"), (op.adjoint, y, "measurement"), (op, x, "input")):
        with pytest.raises(TypeError, match=rf"{type(op).__name__}: give the {what} as a torch tensor "
                                            r"\(torch.from_numpy\(array\)\), not ndarray"):
            call(t.numpy())
