"""Linear operators on torch tensors: the one contract every physics model and solver shares.

An operator maps tensors whose *trailing* dimensions are ``in_shape`` to tensors whose trailing
dimensions are ``out_shape``; any leading dimensions are a batch and pass through unchanged.
A slice-wise CT projector has ``in_shape = (H, W)`` and so projects a whole (Z, H, W) volume or a
chunk of slices in one call; a volume operator such as ``FiniteDifference`` has ``in_shape = (Z, Y, X)``.

Inner products are real: ``<a, b> = Re(sum(conj(a) * b))``, so an operator from a real image to
complex k-space has the adjoint ``Re(A^H y)`` and all identities below hold for it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def slices_apart(A) -> bool:
    """Whether an operator acts on each slice of a volume apart (a slice-wise operator, 2D in_shape and a batch of
    slices; or one that says so: per-slice MRI coil maps): its normal equations are one system per slice."""
    return len(A.in_shape) == 2 or bool(getattr(A, "slices_independent", False))


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product Re<a, b> over all elements."""
    if a.is_complex() or b.is_complex():
        return torch.real(torch.vdot(a.reshape(-1).to(torch.promote_types(a.dtype, b.dtype)),
                                     b.reshape(-1).to(torch.promote_types(a.dtype, b.dtype))))
    return torch.dot(a.reshape(-1), b.reshape(-1))


def inner_per(a: torch.Tensor, b: torch.Tensor, dims: tuple) -> torch.Tensor:
    """Re<a, b> over ``dims`` alone (one inner product per system of a batch), kept for broadcasting."""
    return torch.real(torch.sum(a.conj() * b if a.is_complex() else a * b, dim=dims, keepdim=True))


class LinearOperator:
    """Base class. Subclasses implement ``_forward`` and ``_adjoint`` on tensors of shape (*batch, *in_shape)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)

    # -- to implement -------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_shape, "input")
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.out_shape, "measurement")
        return self._adjoint(y)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Forward with autograd support: the backward pass is the adjoint."""
        if torch.is_grad_enabled() and getattr(x, "requires_grad", False):  # (forward refuses a non-tensor)
            return _Apply.apply(x, self)
        return self.forward(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x (subclasses may override with a fused implementation)."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> "LinearOperator":
        return _Adjoint(self)

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        return _Compose(self, other)

    def __mul__(self, scale: float) -> "LinearOperator":
        return _Scale(self, float(scale))

    __rmul__ = __mul__

    def __add__(self, other: "LinearOperator") -> "LinearOperator":
        return _Sum(self, other)

    def norm(self, n_iter: int = 50, dtype=torch.float64, device=None, batch: Sequence[int] = (),
             seed: int = 0, tol: float = 1e-7) -> float:
        """Operator 2-norm ||A|| estimated by power iteration on A^H A."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*batch, *self.in_shape, generator=g, dtype=dtype).to(device)
        x /= torch.linalg.vector_norm(x)
        lam = 0.0
        for _ in range(n_iter):
            z = self.normal(x)
            new = float(torch.linalg.vector_norm(z))
            if new == 0.0:
                return 0.0
            x = z / new
            if abs(new - lam) <= tol * new:
                lam = new
                break
            lam = new
        return math.sqrt(lam)

    def _check(self, t: torch.Tensor, shape: tuple, what: str):
        if not isinstance(t, torch.Tensor):  # a numpy array failed inside with "no attribute 'is_complex'"
            raise TypeError(f"{type(self).__name__}: give the {what} as a torch tensor (torch.from_numpy(array)), "
                            f"not {type(t).__name__}")
        n = len(shape)
        if tuple(t.shape[t.ndim - n:]) != shape or t.ndim < n:
            raise ValueError(f"{type(self).__name__}: {what} must end in shape {shape}, got {tuple(t.shape)}")

    def __repr__(self):
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return op.forward(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.op.adjoint(g), None


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator):
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    def _forward(self, x):
        return self.op._adjoint(x)

    def _adjoint(self, y):
        return self.op._forward(y)

    @property
    def H(self):
        return self.op


class _Compose(LinearOperator):
    def __init__(self, outer: LinearOperator, inner_op: LinearOperator):
        if outer.in_shape != inner_op.out_shape:
            raise ValueError(f"cannot compose {outer} after {inner_op}: shapes differ")
        super().__init__(inner_op.in_shape, outer.out_shape)
        self.outer, self.inner = outer, inner_op

    def _forward(self, x):
        return self.outer._forward(self.inner._forward(x))

    def _adjoint(self, y):
        return self.inner._adjoint(self.outer._adjoint(y))


class _Scale(LinearOperator):
    def __init__(self, op: LinearOperator, scale: float):
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.scale = op, scale

    def _forward(self, x):
        return self.scale * self.op._forward(x)

    def _adjoint(self, y):
        return self.scale * self.op._adjoint(y)


class _Sum(LinearOperator):
    def __init__(self, a: LinearOperator, b: LinearOperator):
        if (a.in_shape, a.out_shape) != (b.in_shape, b.out_shape):
            raise ValueError(f"cannot add {a} and {b}: shapes differ")
        super().__init__(a.in_shape, a.out_shape)
        self.a, self.b = a, b

    def _forward(self, x):
        return self.a._forward(x) + self.b._forward(x)

    def _adjoint(self, y):
        return self.a._adjoint(y) + self.b._adjoint(y)


class Identity(LinearOperator):
    def __init__(self, shape: Sequence[int]):
        super().__init__(shape, shape)

    def _forward(self, x):
        return x

    def _adjoint(self, y):
        return y


class Diagonal(LinearOperator):
    """Elementwise multiplication by real ``weights`` (self-adjoint): ``weights`` has trailing dims ``shape`` and
    may carry the leading (batch) dims of the data it multiplies, e.g. per-ray weights of every slice."""

    def __init__(self, weights: torch.Tensor, shape: Sequence[int]):
        super().__init__(shape, shape)
        if tuple(weights.shape[weights.ndim - len(self.in_shape):]) != self.in_shape or weights.is_complex():
            raise ValueError(f"Diagonal: real weights of trailing shape {self.in_shape} expected, "
                             f"got {tuple(weights.shape)} {weights.dtype}")
        self.weights = weights

    def _forward(self, x):
        return x * self.weights.to(device=x.device, dtype=x.real.dtype)  # keeps the data's precision

    _adjoint = _forward


class MatrixOperator(LinearOperator):
    """A dense matrix acting on flattened ``in_shape`` (small problems, tests, analytic checks)."""

    def __init__(self, matrix: torch.Tensor, in_shape: Sequence[int] | None = None,
                 out_shape: Sequence[int] | None = None):
        m, n = matrix.shape
        super().__init__(in_shape or (n,), out_shape or (m,))
        if math.prod(self.in_shape) != n or math.prod(self.out_shape) != m:
            raise ValueError("in_shape/out_shape do not match the matrix size")
        self.matrix = matrix

    def _mat(self, like):
        return self.matrix.to(device=like.device, dtype=torch.promote_types(self.matrix.dtype, like.dtype))

    def _forward(self, x):
        batch = x.shape[: x.ndim - len(self.in_shape)]
        y = x.reshape(*batch, -1).to(self._mat(x).dtype) @ self._mat(x).T
        return y.reshape(*batch, *self.out_shape)

    def _adjoint(self, y):
        batch = y.shape[: y.ndim - len(self.out_shape)]
        mat = self._mat(y)
        x = y.reshape(*batch, -1).to(mat.dtype) @ mat.conj()
        return x.reshape(*batch, *self.in_shape)


class FiniteDifference(LinearOperator):
    """Forward differences along one or more axes of a volume of shape ``shape``.

    ``boundary="neumann"`` (default): the difference across the last slice is zero, so a constant
    volume has zero TV and the first and last slices are not tied together.
    ``boundary="periodic"``: the last slice is differenced with the first, as the DiffusionMBIR
    reference code does (torch.roll); kept for faithful reproduction.
    The output stacks one difference image per axis: shape ``(len(axes), *shape)``.
    """

    def __init__(self, shape: Sequence[int], axes: Sequence[int] = (0,), boundary: str = "neumann"):
        shape = tuple(shape)
        if boundary not in ("neumann", "periodic"):
            raise ValueError(f"boundary must be 'neumann' or 'periodic', got {boundary!r}")
        self.axes = tuple(a % len(shape) for a in axes)
        self.boundary = boundary
        super().__init__(shape, (len(self.axes), *shape))

    def _dim(self, x, axis):
        return x.ndim - len(self.in_shape) + axis

    def _forward(self, x):
        out = []
        for a in self.axes:
            d = self._dim(x, a)
            diff = torch.roll(x, -1, dims=d) - x
            if self.boundary == "neumann":
                diff.narrow(d, x.shape[d] - 1, 1).zero_()
            out.append(diff)
        return torch.stack(out, dim=x.ndim - len(self.in_shape))

    def _adjoint(self, y):
        k = y.ndim - len(self.out_shape)
        x = torch.zeros(y.shape[:k] + self.in_shape, dtype=y.dtype, device=y.device)
        for i, a in enumerate(self.axes):
            g = y.select(k, i)
            d = k + a
            if self.boundary == "neumann":
                g = g.clone()
                g.narrow(d, g.shape[d] - 1, 1).zero_()
            x += torch.roll(g, 1, dims=d) - g
        return x


def whitened(A: LinearOperator, y: torch.Tensor, sqrt_w: torch.Tensor | None) -> tuple[LinearOperator, torch.Tensor]:
    """(W^1/2 A, W^1/2 y): the weighted least-squares data term 1/2 ||W^1/2 (A x - y)||^2 as a plain one (PWLS);
    (A, y) itself when ``sqrt_w`` is None."""
    if sqrt_w is None:
        return A, y
    return Diagonal(sqrt_w, A.out_shape) @ A, y * sqrt_w
