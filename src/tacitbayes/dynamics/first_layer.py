"""Is a trained first layer the minimum-distance-to-init solution of its linearized problem?

For a network f(x) = T(W₁x + b₁) (``T`` the rest of the network, frozen at init),
the Jacobian of the N·C training outputs with respect to the first-layer weights
W₁ ∈ R^{h×p} at init is

    J[(i, c), (j, k)] = G_i[c, j] · x_i[k],   G_i = ∂T/∂h at h = W₁(0)x_i + b₁(0),

so a change ΔW moves the outputs, to first order, by (J vec ΔW)_i = G_i ΔW x_i. The
minimum-Frobenius-norm change with the same first-order effect is

    ΔW* = J⁺ J vec(ΔW),

the orthogonal projection of ΔW onto the row space of J — what plain gradient descent
on the linearized first layer alone would reach (depth 1 of docs/methods.md §5). It is
computed through the NC×NC kernel K = J Jᵀ, K[(i,c),(l,e)] = (G_i G_lᵀ)[c,e]·x_iᵀx_l:
ΔW* = Jᵀ K⁺ J vec(ΔW), with Jᵀu = Σ_i G_iᵀ u_i x_iᵀ. Since ΔW* is a projection of
ΔW, cos(ΔW, ΔW*) = ‖ΔW*‖/‖ΔW‖; both are reported as a check.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from tacitbayes.errors import InputError

__all__ = ["first_layer_factors", "min_distance_change", "projection_summary"]


def _split(model: nn.Module) -> tuple[nn.Module, nn.Linear, nn.Module]:
    """(head, first Linear, tail) of an ``nn.Sequential`` whose first weighted layer is Linear."""
    if not isinstance(model, nn.Sequential):
        raise InputError(
            f"expected an nn.Sequential (e.g. the mlp model), got {type(model).__name__}"
        )
    layers = list(model)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            return nn.Sequential(*layers[:i]), layer, nn.Sequential(*layers[i + 1 :])
        if any(True for _ in layer.parameters()):
            break
    raise InputError("the model's first layer with parameters must be nn.Linear")


@torch.no_grad()
def first_layer_factors(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(G, X) with J[(i,c),(j,k)] = G[i,c,j]·X[i,k]: G_i = ∂f(x_i)/∂(W₁x_i + b₁), X = flattened inputs."""
    head, first, tail = _split(model)
    X = head(x).to(torch.float64)
    if X.ndim != 2:
        raise InputError(f"the first Linear layer must see flat inputs, got shape {tuple(X.shape)}")
    tail64 = copy.deepcopy(tail).to(torch.float64)
    bias = first.bias if first.bias is not None else torch.zeros(first.out_features)
    h = X @ first.weight.to(torch.float64).T + bias.to(torch.float64)
    return vmap(jacrev(tail64))(h), X


def min_distance_change(
    G: Tensor, X: Tensor, delta_w: Tensor, rcond: float = 1e-10
) -> tuple[Tensor, int]:
    """(ΔW* = J⁺J vec(ΔW) = Jᵀ K⁺ J vec(ΔW), rank J), K = JJᵀ with eigenvalues < rcond·λ_max as zero."""
    N, C, h = G.shape
    if X.shape[0] != N or delta_w.shape != (h, X.shape[1]):
        raise InputError(
            f"shapes do not fit: G {tuple(G.shape)}, X {tuple(X.shape)}, ΔW {tuple(delta_w.shape)}"
        )
    dw = delta_w.to(torch.float64)
    c = torch.einsum("icj,ij->ic", G, X @ dw.T).reshape(-1)  # J vec(ΔW)
    K = torch.einsum("icj,lej->icle", G, G) * (X @ X.T)[:, None, :, None]
    evals, evecs = torch.linalg.eigh(K.reshape(N * C, N * C))
    keep = evals > rcond * evals[-1].clamp_min(torch.finfo(evals.dtype).tiny)
    V = evecs[:, keep]
    u = (V @ ((V.T @ c) / evals[keep])).reshape(N, C)
    return torch.einsum("icj,ic,ik->jk", G, u, X), int(keep.sum())


def projection_summary(delta_w: Tensor, delta_w_star: Tensor, w_init: Tensor) -> dict[str, float]:
    """‖ΔW‖_F, ‖ΔW*‖_F, their ratio, cos(ΔW, ΔW*), ‖ΔW − ΔW*‖/‖ΔW‖ and ‖ΔW‖/‖W₁(0)‖."""
    dw, ds = delta_w.to(torch.float64), delta_w_star.to(torch.float64)
    n_dw, n_ds = float(dw.norm()), float(ds.norm())
    cosine = float((dw * ds).sum()) / max(n_dw * n_ds, 1e-300)
    return {
        "dw_norm": n_dw,
        "dw_star_norm": n_ds,
        "ratio": n_ds / max(n_dw, 1e-300),
        "cosine": cosine,
        "orthogonal_fraction": float((dw - ds).norm()) / max(n_dw, 1e-300),
        "relative_change": n_dw / max(float(w_init.to(torch.float64).norm()), 1e-300),
    }
