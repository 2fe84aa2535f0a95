"""One data contract: every training entry point takes a loader, or a Dataset wrapped by as_loader."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from tacitbayes.batches import (
    BatchLoader,
    as_loader,
    count_examples,
    loader_for_epoch,
    minibatches,
    n_batches,
)
from tacitbayes.data import load_dataset
from tacitbayes.errors import DataError, InputError
from tacitbayes.experiments.compare.registry import FitContext
from tacitbayes.likelihoods import mean_loss
from tacitbayes.models import build_model
from tacitbayes.posteriors import Laplace
from tacitbayes.priors.training import train_with_prior
from tacitbayes.training import TrainConfig, epoch_batches, evaluate_accuracy, train_map
from tacitbayes.variational import IBVIConfig, VariationalModel, train_ibvi

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ood=False, n_train=300)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (1, 8, 8), 10, width=32)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_as_loader_rule() -> None:
    data = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    loader = as_loader(data, 4, shuffle=True, seed=3)
    assert isinstance(loader, BatchLoader) and len(loader) == n_batches(loader) == 3
    assert count_examples(loader) == 10
    # epoch e is permuted by a generator seeded from (seed, e), like the training loops did
    for epoch in (0, 1):
        gen = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        want = [y for _, y in minibatches(data, 4, shuffle=True, generator=gen)]
        got = [y for _, y in loader_for_epoch(loader, epoch)]
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    ordered = [y for _, y in as_loader(data, 4)]
    assert torch.equal(torch.cat(ordered), torch.arange(10))
    given = DataLoader(data, batch_size=5)
    assert as_loader(given, 4) is given and loader_for_epoch(given, 3) is given
    batches = [(torch.zeros(2, 1), torch.zeros(2))]
    assert as_loader(batches, 4) is batches and count_examples(batches) == 2
    assert n_batches(_Unsized(batches)) == 1  # no len: counted in one pass

    class Stream(IterableDataset):
        def __iter__(self):
            yield from zip(torch.zeros(3, 1), torch.zeros(3), strict=True)

    with pytest.raises(InputError, match="IterableDataset"):
        as_loader(Stream(), 4)
    with pytest.raises(InputError, match="one-shot iterator"):
        as_loader(iter(batches), 4)
    with pytest.raises(InputError, match="batch_size"):
        BatchLoader(data, 0)


class _Unsized:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_train_map_takes_a_dataloader_and_a_dataset_the_same_way(digits) -> None:
    """The reported bug: train_map(model, DataLoader(...)) failed with 'not subscriptable'."""
    config = TrainConfig(epochs=2, batch_size=64, progress=False, seed=1)
    a, b, c = _mlp(), _mlp(), _mlp()
    train_map(a, digits.train, config, val_set=digits.val)
    train_map(b, BatchLoader(digits.train, 64, shuffle=True, seed=1), config)
    assert _same(a, b)  # the Dataset rule is exactly this BatchLoader
    loader = DataLoader(digits.train, batch_size=50, shuffle=True)
    result = train_map(c, loader, config, val_set=DataLoader(digits.val, batch_size=40))
    assert len(result.history) == 2 and 0 <= result.history[-1]["val_accuracy"] <= 1
    assert "val_loss" in result.history[-1]
    assert evaluate_accuracy(c, DataLoader(digits.test, batch_size=100)) == evaluate_accuracy(
        c, digits.test
    )


def test_train_map_regression_and_binary_losses() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen)
    y = torch.cat([x.sum(1, keepdim=True), x[:, :1] - x[:, 1:2]], dim=1)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    config = TrainConfig(epochs=20, batch_size=20, lr=1e-2, loss="mse", progress=False)
    result = train_map(net, TensorDataset(x, y), config, val_set=[(x[:50], y[:50])])
    assert result.history[-1]["train_loss"] < 0.2 * result.history[0]["train_loss"]
    assert "val_accuracy" not in result.history[-1] and "val_loss" in result.history[-1]
    label = (x.sum(1) > 0).long()
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    config = TrainConfig(
        epochs=10, batch_size=20, lr=1e-2, loss="binary_cross_entropy", progress=False
    )
    result = train_map(net, TensorDataset(x, label), config, val_set=TensorDataset(x, label))
    assert result.history[-1]["val_accuracy"] > 0.9


def test_mean_loss_names() -> None:
    f = torch.tensor([[0.3], [-1.2]])
    y = torch.tensor([1, 0])
    torch.testing.assert_close(
        mean_loss(f, y, "binary_cross_entropy"),
        nn.functional.binary_cross_entropy_with_logits(f[:, 0], y.float()),
    )
    torch.testing.assert_close(mean_loss(f, y.float(), "mse"), 0.5 * ((f[:, 0] - y) ** 2).mean())
    with pytest.raises(InputError, match="binary_cross_entropy"):
        mean_loss(f, y, "cross_entropy")  # one logit: the binary loss is meant
    with pytest.raises(InputError, match="do not match"):
        mean_loss(torch.zeros(2, 2), torch.zeros(3), "mse")
    with pytest.raises(InputError, match="unknown loss"):
        mean_loss(f, y, "hinge")


def test_train_ibvi_takes_a_dataloader(digits) -> None:
    """The reported bug: train_ibvi(vnet, DataLoader(...)) failed with 'not subscriptable'."""
    config = IBVIConfig(epochs=2, batch_size=64, seed=2, progress=False)
    runs = []
    for data in (digits.train, BatchLoader(digits.train, 64, shuffle=True, seed=2)):
        vnet = VariationalModel(_mlp(), init=True, layers=["5"], rank=2)
        runs.append((vnet, train_ibvi(vnet, data, config, val_set=digits.val)))
    assert runs[0][1].history == runs[1][1].history and _same(runs[0][0], runs[1][0])
    vnet = VariationalModel(_mlp(), init=True, layers=["5"], rank=2)
    loader = DataLoader(digits.train, batch_size=32, shuffle=True)
    result = train_ibvi(vnet, loader, config, val_set=DataLoader(digits.val, batch_size=50))
    assert len(result.history) == 2 and 0 <= result.history[-1]["val_accuracy_mean"] <= 1


def test_train_ivon_takes_a_loader_and_a_regression_loss(digits) -> None:
    from tacitbayes.experiments.compare.method_ivon import IvonSettings, train_ivon

    ctx = FitContext(
        model=nn.Identity(),
        data=digits,
        train_config=TrainConfig(epochs=2, batch_size=50, loss="mse", progress=False),
        model_name="mlp",
        model_options={"width": 16},
        n_samples=3,
        progress=False,
    )
    x, labels = digits.train.tensors
    targets = 2.0 * nn.functional.one_hot(labels, 10).float()  # real targets: regression
    loader = DataLoader(TensorDataset(x, targets), batch_size=30)
    model, opt, info = train_ivon(ctx, IvonSettings(lr=0.1), train_data=loader)
    assert info["ivon"]["ess"] == 300.0  # N counted from the loader
    mean, var = opt.sampled_predict(model, x[:5], 4, likelihood="regression")
    assert mean.shape == var.shape == (5, 10) and bool((var >= 0).all())


def test_train_with_prior_takes_a_dataloader(digits) -> None:
    class Gaussian:
        def penalty(self, model: nn.Module) -> torch.Tensor:
            return 0.5 * sum(p.pow(2).sum() for p in model.parameters())

    config = TrainConfig(epochs=2, batch_size=64, progress=False)
    a, b = _mlp(), _mlp()
    train_with_prior(a, digits.train, Gaussian(), config)
    train_with_prior(b, BatchLoader(digits.train, 64, shuffle=True), Gaussian(), config)
    assert _same(a, b)
    c = _mlp()
    train_with_prior(c, DataLoader(digits.train, batch_size=64, shuffle=True), Gaussian(), config)
    assert not c.training


def test_epoch_batches_accepts_any_loader(digits) -> None:
    loader = DataLoader(digits.train, batch_size=100)
    assert epoch_batches(loader, 64, 0, 3) is loader
    first = next(iter(epoch_batches(digits.train, 64, 0, 3)))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(
        first[1], next(minibatches(digits.train, 64, shuffle=True, generator=gen))[1]
    )


def test_posterior_fits_take_a_dataset_like_its_loader(digits) -> None:
    """Laplace and ProjectedPosterior read a Dataset in FIT_BATCH_SIZE batches, in order."""
    from tacitbayes.batches import FIT_BATCH_SIZE
    from tacitbayes.posteriors import Laplace, ProjectedPosterior

    model = _mlp()
    loader = DataLoader(digits.train, batch_size=FIT_BATCH_SIZE)
    a = Laplace(model, "classification", "diag").fit(digits.train)
    b = Laplace(model, "classification", "diag").fit(loader)
    torch.testing.assert_close(a.posterior_variance(), b.posterior_variance())
    assert a.n_data == b.n_data == len(digits.train)
    x = digits.test.tensors[0][:5]
    p = ProjectedPosterior(model, "classification").fit(digits.train)
    q = ProjectedPosterior(model, "classification").fit(loader)
    torch.testing.assert_close(p.predict(x, n_samples=4), q.predict(x, n_samples=4))


def test_a_nan_batch_mid_fit_is_a_clear_error_naming_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    loader = [(torch.randn(5, 3), torch.randint(0, 2, (5,))) for _ in range(3)]
    loader[1][0][2, 1] = float("nan")
    with pytest.raises(DataError, match=r"batch 1: the batch's inputs hold 1 NaN or infinite"):
        Laplace(model, "classification", "kron").fit(loader)
    loader[1][0][2, 1] = 0.0
    Laplace(model, "classification", "kron").fit(loader)  # finite again: fits
