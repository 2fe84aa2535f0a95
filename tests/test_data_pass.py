"""The one data pass: every pass of a multi-pass fit sees the same rows in the same order."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

import tacitbayes as tb
from tacitbayes.batches import read_batch
from tacitbayes.data_pass import DataPass, fingerprint, fixed_order
from tacitbayes.errors import DataError, InputError

N, D = 90, 4


def _data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    return x, (x.sum(1) > 0).long()


def _rows(passer: DataPass) -> Tensor:
    return torch.cat([b.inputs for b in passer])


def test_a_shuffling_dataloader_is_read_in_order_and_keeps_its_settings() -> None:
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    ordered = fixed_order(loader)
    assert ordered is not loader and ordered.batch_size == 16 and ordered.drop_last
    passer = DataPass(loader)
    first, second = _rows(passer), _rows(passer)
    torch.testing.assert_close(first, x[: 5 * 16], rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert passer.passes == 2


def test_subset_random_sampler_keeps_its_subset() -> None:
    x, y = _data()
    idx = [5, 1, 40, 7, 22]
    loader = DataLoader(TensorDataset(x, y), batch_size=2, sampler=SubsetRandomSampler(idx))
    torch.testing.assert_close(_rows(DataPass(loader)), x[idx], rtol=0, atol=0)


def test_workers_keep_the_fixed_order() -> None:
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, num_workers=2)
    passer = DataPass(loader)
    torch.testing.assert_close(_rows(passer), x, rtol=0, atol=0)
    torch.testing.assert_close(_rows(passer), x, rtol=0, atol=0)


class _Augmented(Dataset):
    """A data set with a random transform: other content on every read."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i] + 0.1 * torch.randn(D), self.y[i]


class _Reshuffling:
    """A re-iterable loader (not a DataLoader) that reorders its batches on every pass."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y, self.epoch = x, y, 0

    def __iter__(self):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(self.epoch))
        self.epoch += 1
        for start in range(0, N, 30):
            idx = order[start : start + 30]
            yield self.x[idx], self.y[idx]


def test_a_loader_that_changes_between_passes_is_refused_in_one_line() -> None:
    x, y = _data()
    for loader in (DataLoader(_Augmented(x, y), batch_size=30), _Reshuffling(x, y)):
        passer = DataPass(loader)
        list(passer)
        with pytest.raises(DataError, match="other data in batch 0 of pass 2") as info:
            list(passer)
        assert "\n" not in str(info.value)


def test_a_shorter_pass_is_refused() -> None:
    x, y = _data()

    class Shrinking:
        def __init__(self) -> None:
            self.n = 3

        def __iter__(self):
            for i in range(self.n):
                yield x[i * 30 : (i + 1) * 30], y[i * 30 : (i + 1) * 30]
            self.n -= 1

    passer = DataPass(Shrinking())
    list(passer)
    with pytest.raises(DataError, match="2 batches in pass 2 and 3 in pass 1"):
        list(passer)


def test_rebatching_keeps_the_rows() -> None:
    x, y = _data()
    passer = DataPass([(x[:50], y[:50]), (x[50:], y[50:])], batch_size=16)
    sizes = [len(b.target) for b in passer]
    assert sizes == [16, 16, 16, 16, 16, 10]
    torch.testing.assert_close(_rows(passer), x, rtol=0, atol=0)


def test_fingerprint_sees_a_swap_of_two_rows() -> None:
    x, y = _data()
    swapped = x[:8].clone()
    swapped[[2, 5]] = swapped[[5, 2]]
    a = fingerprint(read_batch((x[:8], y[:8])))
    b = fingerprint(read_batch((swapped, y[:8])))
    assert not torch.allclose(a, b, rtol=1e-9, atol=0)


def test_a_list_of_bare_input_batches_is_told_what_a_batch_is() -> None:
    x, _ = _data()
    model = nn.Sequential(nn.Linear(D, 3))
    for post in (tb.Laplace(model, "classification"), tb.ProjectedPosterior(model)):
        with pytest.raises(InputError, match="bare tensors"):
            post.fit([x[:30], x[30:60], x[60:]])


class _CountingLoader:
    """A re-iterable of batches that counts how often each batch is read."""

    def __init__(self, x: Tensor, y: Tensor, size: int) -> None:
        self.batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
        self.reads = [0] * len(self.batches)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for i, batch in enumerate(self.batches):
            self.reads[i] += 1
            yield batch


def _trained(x: Tensor, y: Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("structure", ["diag", "kron", "last_layer"])
def test_laplace_fit_reads_each_batch_once(structure: str) -> None:
    x, y = _data()
    loader = _CountingLoader(x, y, 16)
    tb.Laplace(_trained(x, y), "classification", structure=structure).fit(loader)
    assert loader.passes == 1 and loader.reads == [1] * len(loader.batches)


@pytest.mark.parametrize("solver", ["gram", "nystrom"])
def test_projected_passes_read_each_batch_once_per_pass(solver: str) -> None:
    x, y = _data()
    loader = _CountingLoader(x, y, 16)
    post = tb.ProjectedPosterior(_trained(x, y), solver=solver).fit(loader)
    post.optimize_prior_precision(n_samples=4)
    assert loader.passes >= 1
    assert loader.reads == [loader.passes] * len(loader.batches)


def test_projected_on_a_shuffled_loader_equals_the_ordered_fit() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(120, D, generator=gen)
    y = (x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(120, 1, generator=gen)).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    fits = []
    for shuffle in (False, True):
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle)
        post = tb.ProjectedPosterior(model, "regression").fit(loader)
        alpha = post.optimize_prior_precision(n_samples=8)
        mean, var = post.predict(x[:10], n_samples=8)
        fits.append((alpha, post.null_space_residual(), mean, var))
    (a0, r0, m0, v0), (a1, r1, m1, v1) = fits
    assert r0 <= 1e-3 and r1 <= 1e-3
    assert abs(a1 - a0) <= 1e-6 * a0
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=0)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
