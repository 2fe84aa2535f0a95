"""IVON's compiled one-pass update against its eager twin and the fallback when compiling fails."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import tacitbayes.optim.ivon_fused as fused
from tacitbayes.errors import InputError
from tacitbayes.optim import IVON


def _args(dtype: torch.dtype, with_geps: bool, clip: float) -> list:
    g = torch.Generator().manual_seed(0)
    n = 1000
    p, m, grad = (torch.randn(n, generator=g, dtype=dtype) for _ in range(3))
    h = torch.rand(n, generator=g, dtype=dtype) + 0.1
    geps = torch.randn(n, generator=g, dtype=dtype) if with_geps else None
    r = (h + 0.01).rsqrt()
    scalars = [0.9, 1e-3, 0.01, 0.05 / 0.19, 0.19, math.sqrt(500.0) / 2, clip]
    return [p, m, h, grad, geps, r, *(torch.tensor(v, dtype=dtype) for v in scalars)]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_geps, clip", [(True, math.inf), (False, 0.05), (True, 0.05)])
def test_compiled_update_equals_the_eager_one(
    dtype: torch.dtype, rtol: float, with_geps: bool, clip: float
) -> None:
    eager = _args(dtype, with_geps, clip)
    compiled = [t.clone() if isinstance(t, torch.Tensor) else t for t in eager]
    fused.ivon_update_eager_(*eager)
    fused.ivon_update_(*compiled)
    for a, b in zip(eager[:6], compiled[:6], strict=True):
        if a is not None:
            assert torch.allclose(a, b, rtol=rtol, atol=rtol * 1e-3)
    assert not torch.equal(eager[0], _args(dtype, with_geps, clip)[0])  # μ moved


def test_fused_and_eager_optimizers_train_alike() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    models = []
    for flag in (True, False):
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)
        ).double()  # 4-D, 2-D and 1-D parameters
        opt = IVON(model.parameters(), lr=0.1, ess=32.0, hess_init=0.5, seed=3, fused=flag)
        assert opt.fused is flag
        for _ in range(4):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_a_failed_compilation_warns_once_and_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fused, "_COMPILED", None)
    monkeypatch.setattr(fused, "_FAILED", False)
    monkeypatch.setattr(torch, "compile", broken)
    expected = _args(torch.float64, True, math.inf)
    got = [t.clone() if isinstance(t, torch.Tensor) else t for t in expected]
    fused.ivon_update_eager_(*expected)
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        fused.ivon_update_(*got)
    assert all(torch.equal(a, b) for a, b in zip(expected[:6], got[:6], strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call neither warns nor tries to compile
        fused.ivon_update_(*got)


def test_fused_must_be_a_flag() -> None:
    with pytest.raises(InputError, match="fused"):
        IVON([nn.Parameter(torch.zeros(2))], lr=0.1, ess=1.0, fused="yes")  # type: ignore[arg-type]


def test_batched_update_equals_the_eager_one_across_chunks_and_new_scalars() -> None:
    """Several parameters per compiled call (more than one chunk); new scalar values reuse the
    graph and still give the eager result (Python floats did not: they are refused)."""
    g = torch.Generator().manual_seed(1)
    sizes = [3, 7, 1, 12, 5, 2, 4, 9, 6, 8]  # > CHUNK parameters: two calls
    assert len(sizes) > fused.CHUNK

    def lists() -> list[list[torch.Tensor]]:
        p, m, grad, geps = ([torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
                            for _ in range(4))  # fmt: skip
        h = [torch.rand(n, generator=g, dtype=torch.float64) + 0.1 for n in sizes]
        r = [(x + 0.01).rsqrt() for x in h]
        return [p, m, h, grad, geps, r]

    for scalars in ([0.9, 1e-3, 0.01, 0.3, 0.19, 22.0, math.inf],
                    [0.8, 0.1, 0.03, 0.14, 0.36, 1.5, 0.05],
                    [0.7, 0.01, 0.02, 0.5, 0.51, 4.5, math.inf]):  # fmt: skip
        numbers = [torch.tensor(v, dtype=torch.float64) for v in scalars]
        eager = lists()
        compiled = [[t.clone() for t in column] for column in eager]
        fused.ivon_update_many_eager_(*eager, *numbers)
        fused.ivon_update_many_(*compiled, *numbers)
        for a_col, b_col in zip(eager, compiled, strict=True):
            for a, b in zip(a_col, b_col, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match="0-d tensors"):
        fused.ivon_update_many_(*lists(), *[0.9, 1e-3, 0.01, 0.3, 0.19, 22.0, math.inf])
