"""J Σ Jᵀ of diagonal and Kronecker-factored Laplace posteriors from the layers' factored Jacobians.

For a Linear/Conv2d layer the Jacobian of output o of example n with respect to
W̃ = [W, b] is R_no = Σ_t g_not ã_ntᵀ (out × d): the output gradients g of the identity
columns (one backward pass, batched over the O outputs) times the layer inputs ã
(:func:`tacitbayes.curvature.layers.backprop_batch`). When the posterior covariance of the
layer is Σ_l = (Q_G ⊗ Q_A) diag(vec W) (Q_G ⊗ Q_A)ᵀ (KFAC: eigenbases of G and A,
W = 1/(s(λ_G λ_Aᵀ) + δ); diagonal: Q = I, W the variances), then

    [J Σ_l Jᵀ]_n,op = Σ_ij R̃_no,ij R̃_np,ij W_ij,   R̃ = Q_Gᵀ R Q_A,

which for one location per example (T = 1, a Linear layer on vectors) is
Σ_i g̃_noi g̃_npi Σ_j W_ij ã_nj²: O(out·d + O²·out) per example instead of rotating O
P-sized Jacobian rows. Every other parameter (norms, embeddings) has a diagonal Σ and
enters through its per-example Jacobian columns. The result equals
:func:`tacitbayes.posteriors.glm.glm_predictive` with the backend's ``covariance_apply``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tacitbayes.batches import Inputs, move_inputs, n_examples, slice_inputs
from tacitbayes.budget import WORKING_BYTES, items_per_chunk
from tacitbayes.curvature.columns import per_example_columns
from tacitbayes.curvature.layers import FactoredLayer, backprop_batch, split_layers
from tacitbayes.curvature.losses import MSELoss
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel

__all__ = ["LayerCovariance", "factored_glm_predictive"]


@dataclass
class LayerCovariance:
    """Σ_l = (Q_G ⊗ Q_A) diag(vec W) (Q_G ⊗ Q_A)ᵀ for W̃ = [W, b] (out × d); a Q of None is I."""

    q_out: Tensor | None
    q_in: Tensor | None
    weights: Tensor


def _rest_offsets(model: nn.Module, names: Sequence[str], rest: Sequence[str]) -> Tensor:
    """Flat indices (in the order of ``names``) of the parameters ``rest``."""
    live = dict(model.named_parameters())
    starts, start = {}, 0
    for n in names:
        starts[n] = start
        start += live[n].numel()
    index = [torch.arange(starts[n], starts[n] + live[n].numel()) for n in rest]
    return torch.cat(index) if index else torch.zeros(0, dtype=torch.long)


def _augmented(layer: FactoredLayer, a: Tensor) -> Tensor:
    """ã in the W̃ layout: [a, 1] with a free bias, [1] with only the bias free, else a."""
    if not layer.bias:
        return a
    ones = torch.ones((*a.shape[:-1], 1), dtype=a.dtype, device=a.device)
    return torch.cat([a, ones], -1) if layer.weight else ones


def _layer_term(a: Tensor, g: Tensor, cov: LayerCovariance) -> Tensor:
    """[J Σ_l Jᵀ]_n for one layer: inputs ã (N, T, d), output gradients g (O, N, T, out) → (N, O, O)."""
    if cov.q_out is not None:
        g = g @ cov.q_out
    if cov.q_in is not None:
        a = a @ cov.q_in
    w = cov.weights.to(g.dtype)
    if a.shape[1] == 1:  # one location: R_no = g_no ã_nᵀ
        term = a[:, 0].square() @ w.T  # (N, out): Σ_j W_ij ã_nj²
        g1 = g[:, :, 0]  # (O, N, out)
        return torch.einsum("oni,pni,ni->nop", g1, g1, term)
    r = torch.einsum("onti,ntj->onij", g, a)
    return torch.einsum("onij,pnij,ij->nop", r, r, w)


def factored_glm_predictive(
    model: nn.Module,
    param_names: Sequence[str],
    x: Inputs,
    layers: dict[str, LayerCovariance],
    variance: Tensor,
    max_bytes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(f(θ*, x), J Σ Jᵀ) with Σ block diagonal: ``layers`` for Linear/Conv2d, diag ``variance`` elsewhere.

    ``variance`` is diag Σ over all covered parameters (P,); only the entries of the
    parameters outside the factored layers are read. Examples go in chunks whose
    backpropagated signals fit ``max_bytes`` (default: the working budget).
    """
    fmodel = FunctionalModel(model, param_names)
    names = fmodel.param_names
    flayers, rest = split_layers(model, names)
    if sorted(layers) != sorted(la.name for la in flayers):
        raise InputError(
            f"layer covariances for {sorted(layers)}, but the factored layers are "
            f"{sorted(la.name for la in flayers)}"
        )
    params = fmodel.params()
    first = next(iter(params.values()))
    x = move_inputs(x, first.device, first.dtype)
    n = n_examples(x)
    if n < 1:
        raise InputError("x must hold at least one example")
    by_name = {la.name: la for la in flayers}
    rest_var = variance[_rest_offsets(model, names, rest).to(variance.device)]
    budget = WORKING_BYTES if max_bytes is None else int(max_bytes)
    loss = MSELoss()  # its output-Hessian factor is I: the columns are the O outputs

    def signals(xc: Inputs) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        nc = n_examples(xc)
        with torch.no_grad():
            o = fmodel(params, slice_inputs(xc, 0, 1)).shape[-1]
        target = torch.zeros(nc, o, dtype=first.dtype, device=first.device)
        f, _, _, chunks = backprop_batch(fmodel, loss, flayers, xc, target, max_bytes=2**62)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for chunk in chunks:  # one chunk: the budget above admits every column
            for name, sig in chunk.items():
                out[name] = (_augmented(by_name[name], sig.inputs.detach()), sig.grads.detach())
        return f, out

    _, probe = signals(slice_inputs(x, 0, 1))  # one example: the signal sizes per example
    per_example = sum(
        a.numel()
        + 3 * g.numel()
        + (2 * g.shape[0] * layers[k].weights.numel() if a.shape[1] > 1 else 0)
        for k, (a, g) in probe.items()
    )
    chunk = items_per_chunk(per_example * first.element_size(), n, budget)
    means, covs = [], []
    for start in range(0, n, chunk):
        xc = slice_inputs(x, start, min(n, start + chunk))
        f, sig = signals(xc)
        o = f.shape[1]
        cov = torch.zeros(f.shape[0], o, o, dtype=f.dtype, device=f.device)
        for name, (a, g) in sig.items():
            cov += _layer_term(a, g, layers[name])
        if rest:
            eye = torch.eye(o, dtype=f.dtype, device=f.device).expand(f.shape[0], o, o)
            parts = list(per_example_columns(model, rest, xc, eye, max_bytes=budget))
            jac = torch.cat(parts)  # (N, O, P_rest)
            cov += (jac * rest_var) @ jac.mT
        means.append(f)
        covs.append(0.5 * (cov + cov.mT))
    return torch.cat(means), torch.cat(covs)
