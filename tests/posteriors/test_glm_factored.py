"""The factored J Σ Jᵀ of diag and kron Laplace equals the generic one (Σ on per-example rows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.posteriors import Laplace
from tacitbayes.posteriors.glm import glm_predictive

DT = torch.float64


def _model(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if kind == "cnn":  # Conv2d (many locations per example) and Linear
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
        x = torch.randn(9, 1, 6, 6, generator=gen, dtype=DT)
    elif kind == "norm":  # a LayerNorm (a diagonal block) and a Linear without bias
        model = nn.Sequential(
            nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4, bias=False)
        )
        x = torch.randn(9, 5, generator=gen, dtype=DT)
    else:  # tokens: a Linear applied at 3 locations per example, then pooled
        model = nn.Sequential(_Tokens(), nn.Linear(5, 6), nn.Tanh(), _Pool(), nn.Linear(6, 4))
        x = torch.randn(9, 5, generator=gen, dtype=DT)
    y = torch.randint(0, 4, (9,), generator=gen)
    return model.double(), x, y


class _Tokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, 2 * x, x.flip(-1)], 1)  # (N, 3, 5)


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


@pytest.mark.parametrize("structure", ["diag", "kron"])
@pytest.mark.parametrize("kind", ["cnn", "norm", "tokens"])
def test_factored_covariance_equals_generic(kind: str, structure: str) -> None:
    model, x, y = _model(kind)
    la = Laplace(model, "classification", structure, prior_precision=0.3).fit([(x, y)])
    la.prior_precision = torch.linspace(0.2, 2.0, len(la.groups), dtype=DT)  # δ per group
    la.curvature.scale = 1.7
    mean, cov = la.glm_predictive(x[:5])
    delta = la._deltas(None)
    ref_mean, ref_cov = glm_predictive(
        model, x[:5], lambda V: la.curvature.covariance_apply(V, delta), la.param_names
    )
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-9, atol=1e-12)
    # one example per chunk gives the same
    _, small = la.glm_predictive(x[:5], max_bytes=1)
    torch.testing.assert_close(small, cov, rtol=1e-12, atol=1e-14)
