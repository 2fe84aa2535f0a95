"""Gradient descent on underdetermined systems: closed forms, implicit bias, errors, the CLI."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, jacrev

from tacitbayes.dynamics import (
    min_l1_solution,
    min_norm_solution,
    solve_underdetermined,
    solve_underdetermined_batch,
)
from tacitbayes.dynamics.first_layer import (
    first_layer_factors,
    min_distance_change,
    projection_summary,
)
from tacitbayes.errors import InputError, TacitBayesError, TrainingDivergedError
from tacitbayes.experiments.linsys.cli import add_subparser
from tacitbayes.experiments.linsys.run import PLOTS, LinsysSettings, run_linsys
from tacitbayes.experiments.linsys.studies import sparse_problems
from tacitbayes.models import build_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def system(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=gen, dtype=torch.float64),
        torch.randn(n, generator=gen, dtype=torch.float64),
    )


@pytest.fixture(scope="module")
def sparse() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    A, y, b = sparse_problems(1, 40, 100, 5, torch.Generator().manual_seed(0))
    return A[0], y[0], b[0]


def test_linear_gd_reaches_solution_nearest_to_init() -> None:
    A, b = system(15, 40)
    for seed in range(3):
        y0 = torch.randn(
            40, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64
        )
        result = solve_underdetermined(A, b, model="linear", y0=y0, tol=1e-12)
        assert result.converged and result.residual <= 1e-12
        assert rel(result.y, min_norm_solution(A, b, y0)) < 1e-6
    explicit = A.T @ torch.linalg.solve(A @ A.T, b)
    assert rel(solve_underdetermined(A, b, tol=1e-12).y, explicit) < 1e-6  # y0 = 0 by default
    assert rel(min_norm_solution(A, b), explicit) < 1e-12


def test_result_records_a_decreasing_loss() -> None:
    A, b = system(10, 30)
    result = solve_underdetermined(A, b, tol=1e-10, record_every=3)
    assert result.loss_steps[0] == 0 and result.loss_steps[-1] == result.steps
    assert len(result.losses) == len(result.loss_steps) >= 3
    assert bool((result.losses[1:] <= result.losses[:-1]).all())
    short = solve_underdetermined(A, b, max_steps=5, tol=1e-14)
    assert short.steps == 5 and not short.converged


def test_deep_linear_depth_one_is_the_linear_model() -> None:
    A, b = system(12, 30, seed=1)
    deep = solve_underdetermined(A, b, model="deep-linear", depth=1, init_scale=0.5, seed=3)
    gen = torch.Generator().manual_seed(3)
    y0 = 0.5 * torch.randn(1, 30, generator=gen, dtype=torch.float64)[0] / 30**0.5
    linear = solve_underdetermined(A, b, model="linear", init_scale=0.5, seed=3)
    assert torch.allclose(deep.y, linear.y, rtol=0, atol=1e-12)
    assert deep.steps == linear.steps
    assert rel(deep.y, min_norm_solution(A, b, y0)) < 1e-6


def test_diagonal_depth_one_and_deep_linear_small_init_give_min_norm() -> None:
    A, b = system(10, 25, seed=2)
    target = min_norm_solution(A, b)
    diag = solve_underdetermined(A, b, model="diagonal", depth=1, init_scale=3.0)
    assert rel(diag.y, target) < 1e-6
    deep = solve_underdetermined(A, b, model="deep-linear", depth=3, init_scale=1e-3, tol=1e-9)
    assert deep.converged and rel(deep.y, target) < 1e-2


def test_diagonal_small_init_recovers_the_sparse_signal(sparse) -> None:
    A, y_true, b = sparse
    assert rel(min_norm_solution(A, b), y_true) > 0.1
    result = solve_underdetermined(A, b, model="diagonal", depth=2, init_scale=1e-6, max_steps=5000)
    assert rel(result.y, y_true) < 1e-2


def test_diagonal_large_init_lands_near_min_norm(sparse) -> None:
    A, _, b = sparse
    result = solve_underdetermined(A, b, model="diagonal", depth=2, init_scale=10.0)
    assert result.converged
    l2, l1 = min_norm_solution(A, b), min_l1_solution(A, b)
    assert rel(result.y, l2) < 1e-3
    assert rel(result.y, l2) < 0.01 * rel(result.y, l1)


def test_batch_matches_single_runs() -> None:
    A, b = system(8, 20, seed=4)
    A2, b2 = system(8, 20, seed=5)
    runs = solve_underdetermined_batch(
        torch.stack([A, A2]), torch.stack([b, b2]), model="diagonal", depth=2, init_scale=[1.0, 0.1]
    )
    for run, (Ai, bi, a) in zip(runs, [(A, b, 1.0), (A2, b2, 0.1)], strict=True):
        single = solve_underdetermined(Ai, bi, model="diagonal", depth=2, init_scale=a)
        assert run.converged and single.converged
        assert rel(run.y, single.y) < 1e-6


def test_min_l1_matches_brute_force_over_basic_solutions() -> None:
    A, b = system(3, 7, seed=6)
    best = None
    for support in itertools.combinations(range(7), 3):
        cols = list(support)
        if abs(float(torch.linalg.det(A[:, cols]))) < 1e-10:
            continue
        y = torch.zeros(7, dtype=torch.float64)
        y[cols] = torch.linalg.solve(A[:, cols], b)
        if best is None or y.abs().sum() < best.abs().sum():
            best = y
    found = min_l1_solution(A, b)
    assert torch.allclose(A @ found, b, atol=1e-8)
    assert abs(float(found.abs().sum() - best.abs().sum())) < 1e-8
    assert rel(found, best) < 1e-6


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    A, b = system(5, 12)
    solve_underdetermined(A, b)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": torch.ones(5), "b": torch.ones(5)}, "2-D"),
        ({"A": torch.ones(6, 4), "b": torch.ones(6)}, "not underdetermined"),
        ({"A": torch.ones(4, 4), "b": torch.ones(4)}, "not underdetermined"),
        ({"b": torch.ones(4)}, "b must have shape"),
        ({"model": "relu"}, "available: linear, deep-linear, diagonal"),
        ({"A": torch.full((3, 6), float("nan"))}, "non-finite"),
        ({"b": torch.tensor([1.0, float("inf"), 0.0])}, "non-finite"),
        ({"model": "diagonal", "depth": 0}, "depth"),
        ({"model": "linear", "depth": 2}, "depth 1"),
        ({"model": "diagonal", "init_scale": -1.0}, "init_scale"),
        ({"model": "diagonal", "depth": 2, "init_scale": 0.0}, "> 0"),
        ({"model": "deep-linear", "depth": 2, "init_scale": 0.0}, "> 0"),
        ({"model": "diagonal", "y0": torch.zeros(6)}, "y0"),
        ({"y0": torch.zeros(5)}, "y0 must have shape"),
        ({"lr": 0.0}, "lr"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_input_raises_input_error(kwargs: dict, message: str) -> None:
    A, b = system(3, 6)
    args = {"A": A, "b": b, **kwargs}
    with pytest.raises(InputError, match=message):
        solve_underdetermined(**args)


def test_bad_input_to_closed_forms() -> None:
    with pytest.raises(InputError, match="not underdetermined"):
        min_norm_solution(torch.ones(3, 3), torch.ones(3))
    with pytest.raises(InputError, match="non-finite"):
        min_l1_solution(torch.ones(2, 4), torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputError, match="no solution"):
        min_l1_solution(torch.ones(2, 4, dtype=torch.float64), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("model", ["linear", "diagonal", "deep-linear"])
def test_huge_step_size_diverges_with_a_clear_error(model: str) -> None:
    A, b = system(5, 12, seed=7)
    depth = 1 if model == "linear" else 2
    with pytest.raises(TrainingDivergedError, match=r"lr=50 is too large") as info:
        solve_underdetermined(A, b, model=model, depth=depth, init_scale=0.5, lr=50.0)
    assert isinstance(info.value, TacitBayesError)


def test_min_distance_change_is_the_projection_on_the_jacobian_row_space() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, width=6, depth=2).double()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    G, X = first_layer_factors(model, x)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def outputs(w: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, "1.weight": w}, (x,)).reshape(-1)

    J = jacrev(outputs)(params["1.weight"]).reshape(15, -1)  # (N·C, h·p)
    delta = torch.randn(6, 16, dtype=torch.float64)
    star, rank = min_distance_change(G, X, delta)
    expected = (torch.linalg.pinv(J) @ (J @ delta.reshape(-1))).reshape(6, 16)
    assert rank == int(torch.linalg.matrix_rank(J))
    assert rel(star, expected) < 1e-8
    summary = projection_summary(delta, star, params["1.weight"])
    assert summary["cosine"] == pytest.approx(summary["ratio"], rel=1e-9)
    assert summary["ratio"] < 1.0


def test_linsys_quick_run_writes_results(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tacitbayes")
    add_subparser(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args(["linsys", "--quick", "--out", str(out), "--no-progress"])
    assert args.run(args) == 0
    for name in ("results.json", "report.md", *PLOTS):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert {"closed_form", "init_scale", "phase_transition", "first_layer", "settings"} <= set(
        results
    )
    assert results["device"] == "cpu" and results["settings"]["device"] == "cpu"
    assert results["closed_form"]["max_rel_error"] < 1e-8
    assert set(results["init_scale"]["models"]) == {"diagonal", "deep-linear"}
    success = results["phase_transition"]["success"]
    assert set(success) == {
        "diagonal_small_init",
        "diagonal_large_init",
        "basis_pursuit",
        "min_norm",
    }
    row = results["first_layer"]["rows"][0]
    assert {"dw_norm", "dw_star_norm", "ratio", "cosine"} <= set(row)
    assert "(3) success rate" in (out / "report.md").read_text()


def test_linsys_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="underdetermined"):
        run_linsys(LinsysSettings(n=30, d=30, quick=True, out=str(tmp_path)))
    with pytest.raises(InputError, match="at most n"):
        run_linsys(LinsysSettings(n=3, k=5, quick=True, out=str(tmp_path)))
    parser = argparse.ArgumentParser(prog="tacitbayes")
    add_subparser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["linsys", "--n", "0"])
