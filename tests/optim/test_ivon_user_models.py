"""IVON on the models users bring: keyword inputs and Hugging Face outputs in the predictive,
the eager update by default, a warning when h has not left hess_init, and a recipe that
trains a small BERT (built from a config: nothing is downloaded)."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import nn

import tacitbayes.optim.ivon_fused as fused_module
from tacitbayes.errors import InputError
from tacitbayes.optim import IVON, sampled_predict

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def _bert(seed: int = 0, width: int = 16, layers: int = 1, length: int = 32) -> nn.Module:
    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=length,
        num_labels=3,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


def _tokens(n: int = 5, length: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 50, (n, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def _manual_predictive(opt: IVON, forward, k: int, seed: int) -> torch.Tensor:
    """(1/S) Σ_s softmax(f(θ_s)) with the samples of a generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(k):
            with opt.sampled_params(generator=gen):
                total = total + forward().softmax(-1)
    return total / k


# ---------------------------------------------------------------------- the predictive


def test_sampled_predict_takes_keyword_inputs_of_a_hugging_face_model() -> None:
    """The reported bug: a dict of input_ids and attention_mask raised AttributeError."""
    model = _bert()
    opt = IVON(model.parameters(), lr=0.1, ess=100.0, seed=0)
    x = _tokens()
    model.eval()
    expected = _manual_predictive(opt, lambda: model(**x).logits, 4, seed=3)
    model.train()
    probs = opt.sampled_predict(model, x, 4, torch.Generator().manual_seed(3))
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    torch.testing.assert_close(probs, expected)
    assert model.training  # restored
    same = sampled_predict(opt, model, x, 4)  # the module-level helper takes them too
    assert same.shape == (5, 3)


def test_sampled_predict_reads_the_logits_of_an_output_object() -> None:
    """The reported bug: a Tensor input to a model returning `.logits` raised TypeError."""
    model = _bert()
    opt = IVON(model.parameters(), lr=0.1, ess=100.0, seed=0)
    ids = _tokens()["input_ids"]
    by_tensor = opt.sampled_predict(model, ids, 3, torch.Generator().manual_seed(5))
    by_keyword = opt.sampled_predict(model, {"input_ids": ids}, 3, torch.Generator().manual_seed(5))
    assert by_tensor.shape == (5, 3)
    torch.testing.assert_close(by_tensor, by_keyword)


class _DictOut(nn.Module):
    """A model that returns a mapping with "logits" (and something else)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(features)
        return {"hidden": features, "logits": logits}


def test_sampled_predict_reads_logits_from_a_mapping_and_casts_float_inputs() -> None:
    torch.manual_seed(0)
    model = _DictOut().double()
    opt = IVON(model.parameters(), lr=0.1, ess=20.0, seed=0)
    x = torch.randn(6, 4)  # float32 inputs to a float64 model: cast, as elsewhere
    expected = _manual_predictive(opt, lambda: model.linear(x.double()), 5, seed=2)
    probs = opt.sampled_predict(model, {"features": x}, 5, torch.Generator().manual_seed(2))
    assert probs.dtype == torch.float64
    torch.testing.assert_close(probs, expected)
    mean, var = opt.sampled_predict(model, x, 5, likelihood="regression")
    assert mean.shape == var.shape == (6, 3)


@pytest.mark.parametrize(
    "x, match",
    [
        ([[1, 2, 3]], "Tensor or a mapping"),
        ({"input_ids": [1, 2]}, "do not"),
        ({}, "empty mapping"),
        ({"input_ids": torch.zeros(3, 4), "attention_mask": torch.ones(2, 4)}, "leading batch"),
        (torch.zeros(0, 8, dtype=torch.long), "no examples"),
    ],
)
def test_sampled_predict_refuses_inputs_it_cannot_read(x: object, match: str) -> None:
    model = _bert()
    opt = IVON(model.parameters(), lr=0.1, ess=100.0, seed=0)
    with pytest.raises(InputError, match=match):
        opt.sampled_predict(model, x, 2)  # type: ignore[arg-type]


def test_sampled_predict_needs_a_module() -> None:
    model = nn.Linear(3, 2)
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0)
    with pytest.raises(InputError, match="nn.Module"):
        opt.sampled_predict(lambda t: model(t), torch.zeros(2, 3), 2)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- eager by default


def _one_step(opt: IVON, model: nn.Module) -> None:
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with opt.sampled_params(train=True):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_the_update_is_eager_unless_fused_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torch.compile on the first step by default (it cost 8–114 s); fused=True opts in."""
    calls: list[int] = []

    def compiled():  # noqa: ANN202  (stands in for the compiled twin: no compiling in tests)
        def run(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            calls.append(len(args[0]))
            fused_module.ivon_update_many_eager_(*args, **kwargs)

        return run

    monkeypatch.setattr(fused_module, "_compiled", compiled)
    monkeypatch.setattr(fused_module, "_FAILED", False)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0)
    assert opt.fused is False
    _one_step(opt, model)
    assert calls == []
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0, fused=True)
    _one_step(opt, model)
    assert calls == [2]  # weight and bias in one call


@pytest.mark.parametrize("flag", [None, 1, "yes"])
def test_fused_is_a_flag(flag: object) -> None:
    with pytest.raises(InputError, match="fused must be True or False"):
        IVON([nn.Parameter(torch.zeros(2))], lr=0.1, ess=1.0, fused=flag)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- h that never moves


def _train_mlp(beta2: float, steps: int) -> tuple[IVON, list[warnings.WarningMessage]]:
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = IVON(model.parameters(), lr=0.1, ess=64.0, hess_init=1.0, beta2=beta2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return opt, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _moved(opt: IVON) -> float:
    """mean |h − h₀|/h₀ over every weight."""
    hess = [opt.state[p]["hess"] for g in opt.param_groups for p in g["params"]]
    return float(sum((h - 1.0).abs().sum() for h in hess) / sum(h.numel() for h in hess))


def test_warns_once_when_h_has_not_left_hess_init() -> None:
    """README settings (β₂ = 0.99999): h moves ~0.1% in hundreds of steps; say so, once."""
    opt, caught = _train_mlp(0.99999, 127)
    assert caught == []  # not checked before step 128
    opt, caught = _train_mlp(0.99999, 300)
    assert _moved(opt) < 0.01
    assert len(caught) == 1  # checked at 128 and 256, warned once
    message = str(caught[0].message)
    assert "beta2=0.99999" in message and "after 128 steps" in message
    assert "0.9999" in message and "hess_init" in message
    assert caught[0].filename == __file__  # points at the caller of step()


@pytest.mark.parametrize("beta2", [0.99, 1.0])
def test_no_warning_when_h_moves_or_is_fixed_by_design(beta2: float) -> None:
    opt, caught = _train_mlp(beta2, 260)
    assert caught == []
    if beta2 < 1.0:
        assert _moved(opt) > 0.01


# ---------------------------------------------------------------------- a transformer recipe


def _marker_task(
    n: int, generator: torch.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sequences of 8–16 tokens (padded to 16) holding one marker 1 + y, y ∈ {0, 1, 2}."""
    ids = torch.randint(4, 50, (n, 16), generator=generator)
    lengths = torch.randint(8, 17, (n,), generator=generator)
    mask = (torch.arange(16) < lengths[:, None]).long()
    y = torch.randint(0, 3, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    ids[torch.arange(n), where] = y + 1
    return {"input_ids": ids * mask, "attention_mask": mask}, y


def test_the_recipe_trains_a_small_bert() -> None:
    """examples/ivon_transformer.py's settings: the loss leaves ln 3 within 250 steps."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    x, y = _marker_task(2000, generator)
    model = _bert(width=32, layers=2, length=16)
    opt = IVON(
        model.parameters(),
        lr=2.0,
        ess=len(y),
        hess_init=0.5,
        beta2=0.9999,
        weight_decay=1e-4,
        clip_radius=1e-3,
        seed=0,
    )
    steps = 250
    factor = lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # h moves: no warning
        for _ in range(steps):
            idx = torch.randint(0, len(y), (32,), generator=generator)
            with opt.sampled_params(train=True):
                loss = nn.functional.cross_entropy(
                    model(**{k: v[idx] for k, v in x.items()}).logits, y[idx]
                )
                loss.backward()
            opt.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    assert sum(losses[:25]) / 25 > 0.9 * math.log(3)  # it starts at chance
    assert sum(losses[-25:]) / 25 < 0.3 * math.log(3)
    xt, yt = _marker_task(500, generator)
    probs = opt.sampled_predict(model, xt, n_samples=4)
    assert float((probs.argmax(-1) == yt).double().mean()) > 0.9
    assert time.perf_counter() - start < 60  # ~3 s on a quiet 2-core machine
