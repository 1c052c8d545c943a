"""The LinearOperator contract itself: composition, adjoint views, autograd and FiniteDifference."""
import pytest
import torch

from medrecon.linop import FiniteDifference, Identity, MatrixOperator, inner


def _adjoint_gap(op, dtype=torch.float64, batch=(2,)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*batch, *op.in_shape, generator=g, dtype=dtype)
    y = torch.randn(*batch, *op.out_shape, generator=g, dtype=dtype)
    ax = op.forward(x)
    return float(abs(inner(ax, y) - inner(x, op.adjoint(y))) / (ax.norm() * y.norm()))


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
@pytest.mark.parametrize("axes", [(0,), (0, 1, 2)])
def test_finite_difference_adjoint_and_norm(axes, boundary):
    D = FiniteDifference((6, 5, 4), axes, boundary)
    assert _adjoint_gap(D) < 1e-12
    # ||D_z|| = 2 cos(pi/(2n))-ish for Neumann, 2 sin(pi*floor(n/2)/n) for periodic; both < 2 per axis.
    assert D.norm(n_iter=300) <= 2.0 * len(axes) ** 0.5 + 1e-6


def test_finite_difference_values_and_boundary():
    x = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 2).contiguous()
    neu = FiniteDifference((3, 2, 2)).forward(x)[0, :, 0, 0]
    per = FiniteDifference((3, 2, 2), boundary="periodic").forward(x)[0, :, 0, 0]
    assert neu.tolist() == [1.0, 1.0, 0.0]
    assert per.tolist() == [1.0, 1.0, -2.0]
    assert float(FiniteDifference((3, 2, 2)).forward(torch.ones(3, 2, 2)).abs().sum()) == 0.0


def test_composition_scale_sum_and_adjoint_view():
    g = torch.Generator().manual_seed(1)
    A = MatrixOperator(torch.randn(7, 5, generator=g, dtype=torch.float64))
    B = MatrixOperator(torch.randn(5, 4, generator=g, dtype=torch.float64))
    x = torch.randn(4, dtype=torch.float64)
    assert torch.allclose((A @ B).forward(x), A.matrix @ (B.matrix @ x))
    assert torch.allclose((2.5 * A).forward(B.forward(x)), 2.5 * A.matrix @ B.matrix @ x)
    assert torch.allclose((A + A).adjoint(torch.ones(7, dtype=torch.float64)), 2 * A.matrix.T @ torch.ones(7, dtype=torch.float64))
    assert torch.allclose(A.H.forward(torch.ones(7, dtype=torch.float64)), A.adjoint(torch.ones(7, dtype=torch.float64)))
    assert A.H.H is A
    assert _adjoint_gap(A @ B) < 1e-12
    with pytest.raises(ValueError, match="compose"):
        _ = B @ A
    with pytest.raises(ValueError, match="must end in shape"):
        A.forward(torch.ones(3, dtype=torch.float64))


def test_norm_estimate_matches_svd():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(20, 12, generator=g, dtype=torch.float64)
    assert abs(MatrixOperator(M).norm(n_iter=500) / float(torch.linalg.matrix_norm(M, 2)) - 1) < 1e-3


def test_autograd_backward_is_adjoint():
    g = torch.Generator().manual_seed(3)
    A = MatrixOperator(torch.randn(6, 4, generator=g, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, dtype=torch.float64)
    (A(x) * w).sum().backward()
    assert torch.allclose(x.grad, A.adjoint(w))
    assert torch.allclose(Identity((4,)).forward(x.detach()), x.detach())
