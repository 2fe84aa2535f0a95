"""The null-space solvers behind one protocol: exact against the dense projector, at tol by default."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

import tacitbayes as tb
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.posteriors.solvers import SOLVERS, NullSpaceSolver, SolverSettings, build_solver


def _trained(x, y, widths, likelihood, steps=400, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    layers, fan_in = [], x.shape[1]
    for w in widths:
        layers += [nn.Linear(fan_in, w), nn.ReLU()]
        fan_in = w
    model = nn.Sequential(*layers, nn.Linear(fan_in, 1 if likelihood == "binary" else 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (
        nn.functional.binary_cross_entropy_with_logits
        if likelihood == "binary"
        else nn.functional.cross_entropy
    )
    for _ in range(steps):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model


def _standard(x):
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def _batches(x, y, size=64):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def test_defaults_reach_tol_on_breast_cancer_and_300_digits() -> None:
    """A float32 ReLU net with dead units: K is rank-deficient, float32 products stalled at 4.6e-3."""
    data = load_breast_cancer()
    x, y = _standard(data.data[:426]), torch.tensor(data.target[:426]).float()[:, None]
    cancer = _trained(x, y, [16, 16], "binary")
    digits = load_digits()
    xd, yd = _standard(digits.data[:300]), torch.tensor(digits.target[:300])
    small = _trained(xd, yd, [16, 16], "classification")
    for model, lik, data_ in (
        (cancer, "binary", _batches(x, y)),
        (small, "classification", _batches(xd, yd)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            post = tb.ProjectedPosterior(model, lik).fit(data_)
            post.optimize_prior_precision()
        assert post.null_space_residual() <= post.tol  # projects samples if the tuning did not
        assert post.infos[-1].max_residual <= post.tol


def _dense_projector(model, x, y, lik):
    jac = DataJacobian(
        model, [(x, y)], loss={"binary": "binary_cross_entropy"}.get(lik, "cross_entropy")
    )
    J = jac @ torch.eye(jac.shape[1], dtype=jac.dtype)
    return torch.eye(J.shape[1], dtype=J.dtype) - torch.linalg.pinv(J) @ J, jac


CASES = [(8, 12, name) for name in sorted(SOLVERS)] + [(24, 3, "gram"), (24, 3, "parameter")]


@pytest.mark.parametrize(("n", "width", "name"), CASES)  # P = 190 > N·O = 80; P = 55 < 240
def test_every_solver_equals_the_dense_projector(n: int, width: int, name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=gen)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 10)).double()
    P_dense, jac = _dense_projector(model, x, y, "classification")
    settings = SolverSettings(tol=1e-8, max_iters=500, n_sweeps=500)
    solver = build_solver(name, jac, settings)
    assert isinstance(solver, NullSpaceSolver) and solver.name == name
    V = torch.randn(jac.shape[1], 3, generator=gen, dtype=torch.float64)
    projected, info = solver.project(V)
    error = float(torch.linalg.norm(projected - P_dense @ V) / torch.linalg.norm(V))
    exact = {"gram": 1e-5, "parameter": 1e-8, "alternating": 5e-2}
    assert error <= exact.get(name, 1e-4)
    assert info.solver == name


def test_auto_picks_the_parameter_side_where_p_is_below_n_o_and_its_covariance_is_exact() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (30,), generator=gen)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 10)).double()
    post = tb.ProjectedPosterior(model).fit([(x, y)])
    assert post.solver_used == "parameter"  # P = 100 < N·O = 300
    P_dense, _ = _dense_projector(model, x, y, "classification")
    xt = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    Jt = DataJacobian(model, [(xt, torch.zeros(5, dtype=torch.long))])
    Jt = Jt @ torch.eye(Jt.shape[1], dtype=Jt.dtype)
    dense = (Jt @ P_dense @ Jt.T).reshape(5, 10, 5, 10).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    torch.testing.assert_close(post.linearized_covariance(xt), dense, rtol=1e-6, atol=1e-9)


def test_lora_adapter_projects_exactly() -> None:
    """peft LoRA on a tiny BERT: P = 1,024 < N·O; gram stopped at 1e-1 here before."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            transformers.BertForSequenceClassification(config),
            peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False),
        )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (96, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0
    batches = [
        {
            "input_ids": ids[i : i + 32],
            "attention_mask": mask[i : i + 32],
            "labels": torch.randint(0, 3, (32,), generator=gen),
        }
        for i in range(0, 96, 32)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = tb.ProjectedPosterior(model).fit(batches)
        post.optimize_prior_precision(n_samples=4)
    assert post.n_params < post.n_fit * 3
    assert post.solver_used == "parameter"
    assert post.null_space_residual(n_samples=4) <= post.tol
