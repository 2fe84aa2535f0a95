"""The loss-projected posterior of a VAE against dense per-example gradients, and its predictive.

On a tiny VAE the N×P matrix G of per-example negative-ELBO gradients is formed by
autograd; the posterior's projected noise must equal (I − G⁺G)ε to 1e-6, and every
sample must leave each training example's linearised loss unchanged, G δ = 0, to 1e-6.
The diagonal Laplace baseline's curvature is Σ_n (∇ℓ_n)² from the same dense G and its
prior precision maximises its evidence on a brute-force grid.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tacitbayes.errors import InputError
from tacitbayes.models.vae import VAE
from tacitbayes.posteriors.generative import (
    VAEDiagonalLaplace,
    VAEProjectedPosterior,
    check_vae,
)

N, SIDE, LATENT = 12, 4, 2


def _vae() -> VAE:
    torch.manual_seed(0)
    d = SIDE * SIDE
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, 5), nn.Tanh(), nn.Linear(5, d),
                            nn.Unflatten(1, (1, SIDE, SIDE)))  # fmt: skip
    return VAE((1, SIDE, SIDE), encoder, decoder, LATENT, mean=0.3, std=0.4).double().eval()


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(N, 1, SIDE, SIDE, generator=g, dtype=torch.float64) - 0.3) / 0.4
    return TensorDataset(x, torch.zeros(N, dtype=torch.long))


def _dense_gradients(vae: VAE, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """G (N, P): row n is ∇_θ ℓ_n over the parameters ``names`` (VAE names), by autograd."""
    params = dict(vae.named_parameters())
    rows = []
    for n in range(len(x)):
        loss = vae.negative_elbo(x[n : n + 1], sample=False).sum()
        grads = torch.autograd.grad(loss, [params[k] for k in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _names(vae: VAE, prefix: str | None) -> list[str]:
    return [n for n, _ in vae.named_parameters() if prefix is None or n.startswith(prefix + ".")]


@pytest.mark.parametrize("solver", ["gram", "krylov"])
@pytest.mark.parametrize("params", [None, "decoder"])
def test_projection_equals_the_dense_projector_and_keeps_every_linearised_loss(
    solver: str, params: str | None
) -> None:
    vae, data = _vae(), _data()
    post = VAEProjectedPosterior(vae, params, solver=solver, tol=1e-10, max_iters=500, seed=3)
    post.fit(DataLoader(data, batch_size=5), n_samples=16)
    G = _dense_gradients(vae, _names(vae, params), data.tensors[0])
    assert G.shape[0] == N and G.shape[1] > N  # an underdetermined system: a real null space
    eps = post.projected._eps[:, :16]
    dense = eps - torch.linalg.pinv(G) @ (G @ eps)
    projected = post.projected.projected_noise(16)
    assert torch.allclose(projected, dense, atol=1e-6 * float(eps.abs().max()), rtol=0)
    deltas = post.deltas(16)
    change = (G @ deltas.T).abs().max() / (G.abs().max() * deltas.abs().max())
    assert change < 1e-6  # each training example's linearised loss ℓ_n + ∇ℓ_n·δ is unchanged
    rank = torch.linalg.matrix_rank(G).item()
    theta = torch.cat(
        [p.reshape(-1) for n, p in vae.named_parameters() if n in _names(vae, params)]
    )
    expected = rank / float(theta.square().sum())  # α* = rank(G)/‖θ*‖²
    assert post.prior_precision == pytest.approx(expected, rel=0.35)  # Hutchinson, 16 samples


def test_diagonal_laplace_uses_the_empirical_fisher_and_the_evidence_maximiser() -> None:
    vae, data = _vae(), _data()
    post = VAEDiagonalLaplace(vae, "decoder").fit(DataLoader(data, batch_size=5))
    G = _dense_gradients(vae, _names(vae, "decoder"), data.tensors[0])
    assert torch.allclose(post.diagonal, G.square().sum(0), rtol=1e-10, atol=1e-12)
    grid = torch.logspace(-4, 4, 4001, dtype=torch.float64) * post.prior_precision
    best = grid[int(torch.tensor([post.log_evidence(float(d)) for d in grid]).argmax())]
    assert post.prior_precision == pytest.approx(float(best), rel=1e-2)
    scale = (post.diagonal + post.prior_precision).rsqrt()
    spread = post.deltas(4000).std(0)
    assert torch.allclose(spread, scale, rtol=0.1)


@pytest.mark.parametrize("linearized", [True, False])
def test_predictive_shapes_and_the_score_is_the_summed_variance(linearized: bool) -> None:
    vae, data = _vae(), _data()
    post = VAEProjectedPosterior(vae, solver="gram").fit(DataLoader(data, batch_size=6))
    x = data.tensors[0][:3]
    samples = post.reconstruction_samples(x, n_samples=5, linearized=linearized)
    assert samples.shape == (5, 3, 1, SIDE, SIDE) and bool(((samples > 0) & (samples < 1)).all())
    mean, std = post.reconstruction_stats(x, n_samples=5, linearized=linearized)
    assert torch.allclose(mean, samples.mean(0)) and torch.allclose(std, samples.std(0, False))
    score = post.uncertainty_score(x, n_samples=5, linearized=linearized)
    assert torch.allclose(score, std.square().flatten(1).sum(1))
    generated = post.generated_samples(torch.randn(4, LATENT, dtype=torch.float64), 5, linearized)
    assert generated.shape == (5, 4, 1, SIDE, SIDE)
    with torch.no_grad():
        at_map = torch.sigmoid(vae.decode(vae.encode(x)[0]))
    zero = VAEProjectedPosterior(vae, solver="gram", prior_precision=1e12)
    zero.fit(DataLoader(data, batch_size=6))
    near = zero.reconstruction_samples(x, n_samples=2, linearized=linearized)
    assert torch.allclose(near, at_map.expand_as(near), atol=1e-5)  # α → ∞: the MAP decoder


def test_a_model_without_a_decoder_is_refused() -> None:
    with pytest.raises(InputError, match="needs a VAE with encode"):
        check_vae(nn.Linear(3, 2))
    with pytest.raises(InputError, match="lacks encode, decode, negative_elbo"):
        VAEProjectedPosterior(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(InputError, match="nope"):
        VAEDiagonalLaplace(_vae(), "nope")


def test_data_of_the_wrong_shape_is_a_clear_error() -> None:
    vae = _vae()
    bad = TensorDataset(torch.randn(N, 1, SIDE + 1, SIDE, dtype=torch.float64), torch.zeros(N))
    with pytest.raises(InputError, match="the model cannot take these inputs"):
        VAEProjectedPosterior(vae, solver="gram").fit(DataLoader(bad, batch_size=6))


@pytest.mark.parametrize("kind", [VAEProjectedPosterior, VAEDiagonalLaplace])
def test_vae_posteriors_meet_the_posterior_contract(kind) -> None:
    from tacitbayes.posteriors.contract import Posterior

    vae, data = _vae(), _data()
    options = {"solver": "gram"} if kind is VAEProjectedPosterior else {}
    post = kind(vae, **options).fit(DataLoader(data, batch_size=6))
    assert isinstance(post, Posterior)
    alpha = post.optimize_prior_precision("evidence")
    assert alpha == post.prior_precision > 0
    x = data.tensors[0][:3]
    mean, var = post.predict(x, n_samples=4)
    samples = post.reconstruction_samples(x, n_samples=4)
    torch.testing.assert_close(mean, samples.mean(0))
    torch.testing.assert_close(var, samples.var(0, unbiased=False))
    assert post.sample(4).shape == (4, len(post.deltas(1)[0]))
    again = kind(vae, **options)
    again.load_state_dict(post.state_dict())
    torch.testing.assert_close(again.predict(x, n_samples=4)[0], mean)
    with pytest.raises(InputError, match="evidence only"):
        post.optimize_prior_precision("validation")
