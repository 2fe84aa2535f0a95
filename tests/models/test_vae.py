"""Tests for tacitbayes.models.vae: shapes, the negative ELBO by hand, training and exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tacitbayes.checkpoints import EpochCheckpoints
from tacitbayes.data import load_dataset
from tacitbayes.errors import InputError
from tacitbayes.likelihoods import LIKELIHOODS, LOSSES, TRAIN_LOSSES, mean_loss
from tacitbayes.models import VAE, build_model
from tacitbayes.training import TrainConfig, train_map, validation_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["vae_mlp", "vae_conv"]
SHAPES = [(1, 28, 28), (1, 8, 8)]
CASES = [(n, s) for n in NAMES for s in SHAPES]
IDS = [f"{n}-{s[1]}x{s[2]}" for n, s in CASES]
SMALL = {"vae_mlp": {"width": 32, "latent": 4}, "vae_conv": {"channels": 4, "latent": 4}}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ood=False, n_train=300)


def _build(name: str, shape: tuple[int, int, int], seed: int = 0, **options) -> VAE:
    torch.manual_seed(seed)
    return build_model(name, shape, 10, **{**SMALL[name], **options})


def _batch(shape: tuple[int, int, int], n: int = 5, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_shapes_of_every_method(name, shape) -> None:
    model = _build(name, shape)
    assert isinstance(model, VAE) and model.latent_dim == 4
    x = _batch(shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 4)
    assert model.decode(mu).shape == (5, *shape)
    assert model.targets(x).shape == (5, *shape)
    for probs in (model.reconstruct(x), model.generate(torch.randn(3, 4))):
        assert probs.shape[1:] == shape and ((probs >= 0) & (probs <= 1)).all()
    out = model(x)
    assert out.shape == (5,) and torch.isfinite(out).all() and (out > 0).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("sample", [False, True])
def test_negative_elbo_matches_a_by_hand_computation_in_float64(sample: bool) -> None:
    model = _build("vae_mlp", (1, 8, 8), mean=0.3, std=0.4).double()
    x = _batch((1, 8, 8), dtype=torch.float64)  # x·std + mean leaves [0, 1]: the clamp counts
    torch.manual_seed(5)
    got = model.negative_elbo(x, sample=sample)
    h = model.encoder(x)
    mu, logvar = h[:, :4], h[:, 4:]
    sigma = torch.exp(0.5 * logvar)
    torch.manual_seed(5)
    z = mu + sigma * torch.randn(mu.shape, dtype=torch.float64) if sample else mu
    p = torch.sigmoid(model.decoder(z)).reshape(5, -1)
    m, s = float(model.mean), float(model.std)  # 0.3 and 0.4 rounded to float32 at build
    assert m == pytest.approx(0.3, rel=1e-7) and s == pytest.approx(0.4, rel=1e-7)
    t = torch.clamp(x * s + m, 0, 1).reshape(5, -1)
    assert t.min() == 0 and t.max() == 1
    bce = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).sum(-1)
    kl = (-torch.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5).sum(-1)  # KL(N(μ,σ²) ‖ N(0,1))
    torch.testing.assert_close(got, bce + kl, rtol=1e-10, atol=1e-10)
    assert model.mean.dtype == model.std.dtype == torch.float64


def test_kl_term_matches_a_monte_carlo_estimate() -> None:
    """The closed-form KL is E_q[log q(z) − log p(z)] to within 5 standard errors.

    The estimate is a mean of S = 200,000 i.i.d. draws of the log ratio, so by the CLT its
    error is about N(0, s²/S) with s the draws' sample std; 5 s/√S bounds it except with
    probability < 1e-6 (and the seed is fixed, so the test is deterministic).
    """
    model = _build("vae_mlp", (1, 8, 8)).double()
    x = _batch((1, 8, 8), n=3, dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        closed = model.negative_elbo(x, sample=False) - _bce_sum(model, x, mu)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        z = q.sample(torch.Size([200_000]))
        log_ratio = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(log_ratio))
    assert (closed > 0).all()
    assert ((estimate - closed).abs() < 5 * stderr).all(), (estimate, closed, stderr)


def _bce_sum(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Σ_pixels BCE(decode(z), x01) per example."""
    bce = nn.functional.binary_cross_entropy_with_logits(
        model.decode(z), model.targets(x), reduction="none"
    )
    return bce.reshape(len(x), -1).sum(-1)


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_is_deterministic_and_training_forward_samples(name) -> None:
    model = _build(name, (1, 8, 8))
    x = _batch((1, 8, 8))
    with torch.no_grad():
        model.eval()
        first = model(x)
        assert torch.equal(first, model(x))
        torch.testing.assert_close(first, model.negative_elbo(x, sample=False))
        model.train()
        torch.manual_seed(0)
        a, b = model(x), model(x)
        assert not torch.equal(a, b) and not torch.equal(a, first)
        torch.manual_seed(0)
        assert torch.equal(model(x), a)  # ε comes from torch's global RNG


def test_training_with_model_loss_lowers_the_negative_elbo(digits) -> None:
    model = _build(
        "vae_mlp", digits.input_shape, width=128, latent=8, mean=digits.mean, std=digits.std
    )
    assert float(model.mean) == pytest.approx(digits.mean)
    assert float(model.std) == pytest.approx(digits.std)

    def elbo() -> float:
        model.eval()
        return validation_metrics(model, digits.train, "model_loss", "cpu")["loss"]

    before = elbo()
    config = TrainConfig(loss="model_loss", epochs=3, batch_size=32, lr=3e-3, progress=False)
    result = train_map(model, digits.train, config, val_set=digits.val)
    after = elbo()
    assert after < 0.9 * before, (before, after)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.history[-1]) == {"epoch", "train_loss", "val_loss"}  # no accuracy


class _Crash(Exception):
    """Stands for a kill right after a checkpoint was written."""


def test_resumed_after_a_crash_ends_with_the_uninterrupted_weights(
    digits, tmp_path: Path, monkeypatch
) -> None:
    shape = digits.input_shape
    options = {"mean": digits.mean, "std": digits.std}
    config = TrainConfig(loss="model_loss", epochs=4, batch_size=64, progress=False)
    reference = _build("vae_conv", shape, **options)
    full = train_map(reference, digits.train, config, checkpoint=tmp_path / "full.pt")
    save = EpochCheckpoints.save

    def save_then_crash(self, model, optimizer, done, history):
        save(self, model, optimizer, done, history)
        if done == 2:
            raise _Crash

    monkeypatch.setattr(EpochCheckpoints, "save", save_then_crash)
    with pytest.raises(_Crash):
        train_map(
            _build("vae_conv", shape, **options),
            digits.train,
            config,
            checkpoint=tmp_path / "vae.pt",
        )
    monkeypatch.undo()
    assert torch.load(tmp_path / "vae.pt", weights_only=True)["settings"]["loss"] == "model_loss"
    resumed = _build("vae_conv", shape, **options)
    result = train_map(resumed, digits.train, config, checkpoint=tmp_path / "vae.pt", resume=True)
    assert result.resumed_from == 2 and result.epochs_run == 2 and result.history == full.history
    assert "mean" in resumed.state_dict() and "std" in resumed.state_dict()
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    other = TrainConfig(loss="cross_entropy", epochs=4, batch_size=64, progress=False)
    with pytest.raises(InputError, match="loss was 'model_loss' there but is 'cross_entropy'"):
        train_map(
            _build("vae_conv", shape),
            digits.train,
            other,
            checkpoint=tmp_path / "vae.pt",
            resume=True,
        )


@pytest.mark.parametrize(
    ("name", "shape", "options", "pattern"),
    [
        ("vae_mlp", (1, 8, 8), {"latent": 0}, "latent must be an integer >= 1, got 0"),
        ("vae_mlp", (1, 8, 8), {"latent": 2.5}, "latent must be an integer"),
        ("vae_mlp", (1, 8, 8), {"width": 0}, "width"),
        ("vae_mlp", (1, 8, 8), {"depth": 0}, "depth"),
        ("vae_mlp", (1, 8, 8), {"activation": "swish"}, "unknown activation 'swish'"),
        ("vae_mlp", (1, 8, 8), {"std": 0.0}, "std must be a finite number > 0"),
        ("vae_mlp", (1, 8, 8), {"mean": float("nan")}, "mean must be a finite number"),
        ("vae_mlp", (8, 8), {}, "input_shape"),
        ("vae_conv", (1, 8, 8), {"latent": 0}, "latent must be an integer >= 1"),
        ("vae_conv", (1, 8, 8), {"channels": 0}, "channels"),
        ("vae_conv", (1, 28, 30), {}, "divisible by 4, got 28x30"),
        ("vae_conv", (1, 6, 8), {}, "divisible by 4, got 6x8"),
        ("vae_conv", (1, 8, 8), {"width": 8}, "unknown option 'width' for model 'vae_conv'"),
    ],
)
def test_bad_options_raise_one_line_input_errors(name, shape, options, pattern) -> None:
    with pytest.raises(InputError, match=pattern) as info:
        build_model(name, shape, 10, **options)
    assert "\n" not in str(info.value)


def test_vae_constructor_checks_its_parts() -> None:
    enc, dec = nn.Sequential(nn.Flatten(), nn.Linear(64, 6)), nn.Unflatten(1, (1, 8, 8))
    with pytest.raises(InputError, match="latent_dim must be an integer >= 1"):
        VAE((1, 8, 8), enc, dec, latent_dim=0)
    with pytest.raises(InputError, match=r"encoder must return \(N, 2\*latent_dim\) = \(N, 4\)"):
        VAE((1, 8, 8), enc, dec, latent_dim=2).encode(torch.zeros(2, 1, 8, 8))


def test_model_loss_is_for_training_only_and_needs_per_example_outputs() -> None:
    assert "model_loss" in TRAIN_LOSSES
    assert "model_loss" not in LOSSES and "model_loss" not in LIKELIHOODS.values()
    y = torch.zeros(4, dtype=torch.long)
    losses = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert float(mean_loss(losses, y, "model_loss")) == 3.0
    assert float(mean_loss(losses[:, None], y, "model_loss")) == 3.0
    for bad in (torch.ones(4, 10), torch.tensor(1.0)):
        with pytest.raises(InputError, match="one loss per example"):
            mean_loss(bad, y, "model_loss")
    with pytest.raises(InputError, match="unknown loss 'elbo'; available: .*model_loss"):
        TrainConfig(loss="elbo").validate()
