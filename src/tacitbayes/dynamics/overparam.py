"""Overparametrizations y = y(θ) ∈ R^d of the unknown of a linear system, batched over B problems.

Each parametrization gives the initial parameters, the map θ ↦ y, the gradient of
½‖A y(θ) − b‖² from g = Aᵀ(Ay − b) by the chain rule (closed form, no autograd), and
a rigorous upper bound on the spectral norm of that loss's Hessian in θ, used to
choose a safe step size. All tensors carry a leading batch dimension B.

- ``Linear``: y = θ.
- ``Diagonal(L)``: y = u^{⊙L} − v^{⊙L}, u = v = α·1 at init (y₀ = 0).
- ``DeepLinear(L)``: y = W_L ⋯ W_2 w_1 with w_1 ∈ R^d and square d×d factors
  W_2 … W_L (hidden width h = d); w_1 = α·ξ/√d with ξ ~ N(0, I), each W_k = α·Q_k
  with Q_k Haar-orthogonal, so ‖y₀‖ ≈ α^L. Depth 1 is y = w_1, the linear model
  started from α·ξ/√d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DeepLinear", "Diagonal", "Linear", "Parametrization", "System", "matvec", "rmatvec"]


def matvec(M: Tensor, x: Tensor) -> Tensor:
    """Batched M x for M (…, m, k), x (…, k) (a broadcast product: fast for small sizes)."""
    return (M * x.unsqueeze(-2)).sum(-1)


def rmatvec(M: Tensor, r: Tensor) -> Tensor:
    """Batched Mᵀ r for M (…, m, k), r (…, m)."""
    return (M * r.unsqueeze(-1)).sum(-2)


@dataclass
class System:
    """The batch of systems A (B, n, d) and ‖A_i‖₂² (B,)."""

    A: Tensor
    anorm2: Tensor


class Parametrization:
    """Interface: ``init``, ``forward``, ``grads`` and ``curvature`` over a batch of problems."""

    def init(self, alpha: Tensor, d: int, gen: torch.Generator, y0: Tensor | None) -> list[Tensor]:
        """Initial parameters for init scales ``alpha`` (B,) in dimension ``d``."""
        raise NotImplementedError

    def forward(self, params: list[Tensor]) -> Tensor:
        """The solution y(θ), shape (B, d)."""
        raise NotImplementedError

    def grads(self, params: list[Tensor], g: Tensor) -> list[Tensor]:
        """∂/∂θ ½‖Ay(θ) − b‖² = (∂y/∂θ)ᵀ g, with g = Aᵀ(Ay − b) of shape (B, d)."""
        raise NotImplementedError

    def curvature(self, params: list[Tensor], g: Tensor, system: System) -> Tensor:
        """Upper bound ‖∇²_θ loss‖₂ ≤ ‖A ∂y/∂θ‖₂² + ‖Σ_i g_i ∇²_θ y_i‖₂, shape (B,)."""
        raise NotImplementedError

    def step(self, params: list[Tensor], g: Tensor, eta: Tensor) -> list[Tensor]:
        """One gradient step θ ← θ − η ∇_θ loss, with a step η (B,) per problem."""
        grads = self.grads(params, g)
        return [
            p - eta.view(-1, *([1] * (p.ndim - 1))) * dp
            for p, dp in zip(params, grads, strict=True)
        ]


class Linear(Parametrization):
    """y = θ; the Hessian is AᵀA, of norm ‖A‖₂²."""

    def init(self, alpha: Tensor, d: int, gen: torch.Generator, y0: Tensor | None) -> list[Tensor]:
        """y₀ if given, else α·ξ/√d (zeros where α = 0)."""
        if y0 is not None:
            return [y0.clone()]
        xi = torch.randn(len(alpha), d, generator=gen, dtype=alpha.dtype)
        return [alpha[:, None] * xi / d**0.5]

    def forward(self, params: list[Tensor]) -> Tensor:
        """y = θ."""
        return params[0]

    def grads(self, params: list[Tensor], g: Tensor) -> list[Tensor]:
        """∂/∂y = g."""
        return [g]

    def curvature(self, params: list[Tensor], g: Tensor, system: System) -> Tensor:
        """‖AᵀA‖₂ = ‖A‖₂²."""
        return system.anorm2


class Diagonal(Parametrization):
    """y = u^{⊙L} − v^{⊙L} (Woodworth et al. 2020), u = v = α at init.

    The Gauss–Newton part of the Hessian has norm λ_max(A diag(k) Aᵀ) with the tangent
    kernel k = L²(u^{2L−2} + v^{2L−2}). It is computed exactly (eigvalsh) at a
    reference k_ref and bounded in between by
    λ_max(A diag(k_ref) Aᵀ) + Σ_i (k_i − k_ref,i)₊ ‖a_i‖² (a_i the columns of A);
    the reference is renewed when the second term passes half the first or every
    ``refresh`` calls.
    """

    def __init__(self, depth: int, refresh: int = 100) -> None:
        self.L = depth
        self.refresh = refresh
        self._calls = 0
        self._ref: tuple[Tensor, Tensor] | None = None
        self._col2: Tensor | None = None
        self._pow: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def init(self, alpha: Tensor, d: int, gen: torch.Generator, y0: Tensor | None) -> list[Tensor]:
        """u = v = α·1, so y₀ = 0."""
        u = alpha[:, None].expand(len(alpha), d).clone()
        return [u, u.clone()]

    def _powers(self, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(u^{L−1}, v^{L−1}), cached for the current parameters."""
        u, v = params
        if self._pow is None or self._pow[0] is not u or self._pow[1] is not v:
            L = self.L
            pu = torch.ones_like(u) if L == 1 else u if L == 2 else u.pow(L - 1)
            pv = torch.ones_like(v) if L == 1 else v if L == 2 else v.pow(L - 1)
            self._pow = (u, v, pu, pv)
        return self._pow[2], self._pow[3]

    def forward(self, params: list[Tensor]) -> Tensor:
        """y = u^L − v^L."""
        pu, pv = self._powers(params)
        return params[0] * pu - params[1] * pv

    def grads(self, params: list[Tensor], g: Tensor) -> list[Tensor]:
        """∂/∂u = L u^{L−1} ⊙ g, ∂/∂v = −L v^{L−1} ⊙ g."""
        pu, pv = self._powers(params)
        return [self.L * pu * g, -self.L * pv * g]

    def step(self, params: list[Tensor], g: Tensor, eta: Tensor) -> list[Tensor]:
        """u ← u − ηL u^{L−1} ⊙ g, v ← v + ηL v^{L−1} ⊙ g."""
        pu, pv = self._powers(params)
        t = (self.L * eta).unsqueeze(-1) * g
        return [params[0] - t * pu, params[1] + t * pv]

    def _gauss_newton(self, kernel: Tensor, system: System) -> Tensor:
        A = system.A
        if self._ref is not None and self._calls % self.refresh:
            k_ref, lam_ref = self._ref
            extra = ((kernel - k_ref).clamp_min(0.0) * self._col2).sum(-1)
            if bool((extra <= 0.5 * lam_ref).all()):
                self._calls += 1
                return lam_ref + extra
        if self._col2 is None:
            self._col2 = A.pow(2).sum(-2)
        gram = (A * kernel.unsqueeze(-2)) @ A.transpose(-1, -2)
        lam = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0) * (1 + 1e-12)
        self._ref, self._calls = (kernel.clone(), lam), 1
        return lam

    def curvature(self, params: list[Tensor], g: Tensor, system: System) -> Tensor:
        """λ_max(A diag(L²(u^{2L−2} + v^{2L−2})) Aᵀ) + max_i L(L−1)|g_i| max(|u_i|, |v_i|)^{L−2}."""
        L = self.L
        if L == 1:
            return 2 * system.anorm2
        pu, pv = self._powers(params)
        bound = self._gauss_newton((L * L) * (pu * pu + pv * pv), system)
        if L == 2:
            return bound + 2 * g.abs().amax(-1)
        big = torch.maximum(params[0].abs(), params[1].abs()).pow(L - 2)
        return bound + (L * (L - 1)) * (g.abs() * big).amax(-1)


def _haar_orthogonal(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Haar-distributed orthogonal matrices: Q of QR(G) with the signs of diag(R) fixed."""
    q, r = torch.linalg.qr(torch.randn(*shape, generator=gen, dtype=dtype))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class DeepLinear(Parametrization):
    """y = W_L ⋯ W_2 w_1 with square d×d factors; W is stored as (B, L−1, d, d).

    The spectral norms of the factors, needed by ``curvature``, are computed exactly
    every ``refresh`` calls and bounded in between by ‖W‖₂ ≤ ‖W_ref‖₂ + ‖W − W_ref‖_F.
    """

    def __init__(self, depth: int, refresh: int = 25) -> None:
        self.L = depth
        self.refresh = refresh
        self._calls = 0
        self._ref: tuple[Tensor, Tensor] | None = None

    def init(self, alpha: Tensor, d: int, gen: torch.Generator, y0: Tensor | None) -> list[Tensor]:
        """w_1 = α ξ/√d, W_k = α Q_k (Haar orthogonal)."""
        B = len(alpha)
        w1 = alpha[:, None] * torch.randn(B, d, generator=gen, dtype=alpha.dtype) / d**0.5
        if self.L == 1:
            return [w1]
        Q = _haar_orthogonal((B, self.L - 1, d, d), gen, alpha.dtype)
        return [w1, alpha[:, None, None, None] * Q]

    def _activations(self, params: list[Tensor]) -> list[Tensor]:
        acts = [params[0]]
        for k in range(self.L - 1):
            acts.append(matvec(params[1][:, k], acts[-1]))
        return acts

    def forward(self, params: list[Tensor]) -> Tensor:
        """y = W_L ⋯ W_2 w_1."""
        return self._activations(params)[-1]

    def grads(self, params: list[Tensor], g: Tensor) -> list[Tensor]:
        """Backpropagation: ∂/∂W_k = g_k a_{k−1}ᵀ, g_{k−1} = W_kᵀ g_k, ∂/∂w_1 = g_1."""
        if self.L == 1:
            return [g]
        acts = self._activations(params)
        W = params[1]
        dW = torch.empty_like(W)
        for k in range(self.L - 2, -1, -1):
            dW[:, k] = g.unsqueeze(-1) * acts[k].unsqueeze(-2)
            g = rmatvec(W[:, k], g)
        return [g, dW]

    def _spectral_norms(self, W: Tensor) -> Tensor:
        """Upper bounds on ‖W_k‖₂, shape (B, L−1)."""
        if self._ref is None or self._calls % self.refresh == 0:
            self._ref = (W.clone(), torch.linalg.matrix_norm(W, ord=2) * (1 + 1e-12))
        self._calls += 1
        W_ref, s_ref = self._ref
        return s_ref + torch.linalg.matrix_norm(W - W_ref)

    def curvature(self, params: list[Tensor], g: Tensor, system: System) -> Tensor:
        """‖A‖₂² Σ_k Π_{m≠k} s_m² + ‖g‖ max_k Σ_{j≠k} Π_{m∉{j,k}} s_m, with s_m ≥ ‖factor m‖₂."""
        if self.L == 1:
            return system.anorm2
        s = torch.cat([params[0].norm(dim=-1, keepdim=True), self._spectral_norms(params[1])], -1)
        L = self.L
        eye = torch.eye(L, dtype=torch.bool)
        but_one = torch.where(eye, torch.ones_like(s)[:, None, :], s[:, None, :]).prod(-1)
        gn = system.anorm2 * but_one.pow(2).sum(-1)
        drop = eye[:, None, :] | eye[None, :, :]  # (k, j, m): m ∈ {k, j}
        but_two = torch.where(drop, torch.ones_like(s)[:, None, None, :], s[:, None, None, :])
        pairs = but_two.prod(-1).masked_fill(eye, 0.0)  # (B, k, j), zero for j = k
        return gn + g.norm(dim=-1) * pairs.sum(-1).amax(-1)
