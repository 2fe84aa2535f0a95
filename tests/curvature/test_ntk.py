"""The factored NTK Gram K = J Jᵀ against the dense Jacobian of autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import kernel_factors, ntk_cross, ntk_diagonal, ntk_gram
from tacitbayes.errors import InputError

DT = torch.float64


class ConvNormNet(nn.Module):
    """Conv2d, LayerNorm, a Linear used twice (shared weights) and a plain Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.LayerNorm(48)
        self.hidden = nn.Linear(48, 5)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.conv(x)).flatten(1))
        h = torch.tanh(self.hidden(h))
        return self.head(self.shared(torch.tanh(self.shared(h))))


class SequenceNet(nn.Module):
    """Linear layers applied over a sequence, then averaged: explicit per-row gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x))).mean(1)


def _cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    return [
        ("mlp", mlp, torch.randn(6, 5, dtype=DT)),
        ("conv-norm-shared", ConvNormNet().to(DT), torch.randn(6, 1, 4, 4, dtype=DT)),
        ("sequence", SequenceNet().to(DT), torch.randn(6, 2, 3, dtype=DT)),
    ]


@pytest.mark.parametrize("outputs", ["logits", "loss"])
@pytest.mark.parametrize("case", range(3))
def test_factored_gram_equals_dense_jjt(case: int, outputs: str) -> None:
    _, model, x = _cases()[case]
    y = torch.randint(0, 3, (len(x),))
    dense = DataJacobian(model, [(x, y)], outputs=outputs).to_dense()
    factors = [
        kernel_factors(model, x[:3], y[:3], outputs=outputs),
        kernel_factors(model, x[3:], y[3:], outputs=outputs),
    ]
    torch.testing.assert_close(ntk_cross(factors, factors), dense @ dense.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ntk_gram(factors), dense @ dense.T, rtol=1e-10, atol=1e-12)
    diag = torch.cat([ntk_diagonal(f) for f in factors])
    torch.testing.assert_close(diag, (dense * dense).sum(1), rtol=1e-10, atol=1e-12)
    # a cross block between different inputs
    torch.testing.assert_close(
        ntk_cross(factors[:1], factors[1:]),
        dense[: 3 * factors[0].n_outputs] @ dense.T[:, 3 * factors[0].n_outputs :],
    )


def test_parameter_subset_and_mixed_outputs() -> None:
    _, model, x = _cases()[1]
    y = torch.randint(0, 4, (len(x),))
    names = ["norm.weight", "head.weight"]
    dense = DataJacobian(model, [(x, y)], param_names=names).to_dense()
    factors = [kernel_factors(model, x, y, param_names=names)]
    torch.testing.assert_close(ntk_cross(factors, factors), dense @ dense.T)
    # logits rows of test inputs against loss rows of training inputs
    loss_rows = DataJacobian(model, [(x, y)], outputs="loss").to_dense()
    xt = torch.randn(2, 1, 4, 4, dtype=DT)
    test_rows = DataJacobian(model, [(xt, torch.zeros(2, dtype=torch.long))]).to_dense()
    cross = ntk_cross([kernel_factors(model, xt)], [kernel_factors(model, x, y, outputs="loss")])
    torch.testing.assert_close(cross, test_rows @ loss_rows.T)


def test_loss_rows_are_accurate_for_confident_float32_examples() -> None:
    # p_y ≈ 1 − 1e-9: differentiating logsumexp(f) − f_y in float32 loses every digit
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        model.bias.zero_()
    x, y = torch.tensor([[2.0, 1.0]]), torch.tensor([0])
    exact = DataJacobian(model.double(), [(x.double(), y)], outputs="loss").to_dense()
    model.float()
    rows32 = DataJacobian(model, [(x, y)], outputs="loss").to_dense().double()
    assert torch.allclose(rows32, exact, rtol=1e-5, atol=0)
    factors = kernel_factors(model, x, y, outputs="loss")
    gram = ntk_cross([factors], [factors])
    assert torch.allclose(gram, exact @ exact.T, rtol=1e-5, atol=0)


def test_explicit_rows_over_the_byte_limit_are_refused() -> None:
    _, model, x = _cases()[1]
    with pytest.raises(InputError, match="explicit per-row gradients"):
        kernel_factors(model, x, max_explicit_bytes=1000)
