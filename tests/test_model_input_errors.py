"""Inputs that do not fit the model give one readable InputError naming them, at every entry point.

Torch's own messages ("mat1 and mat2 shapes cannot be multiplied (16x7 and 5x8)") do not
say which data or what to change; and an out-of-range class label is an IndexError on the
CPU but a fatal device-side assert on CUDA. Each entry point (MAP and IBVI training (IVON's
loop reads batches through the same ``call_model``),
the Laplace and projected fits and their predictions) is checked with inputs of the wrong
width, integer inputs for a float model, and labels beyond the model's classes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tacitbayes as tb
from tacitbayes.variational import IBVIConfig, train_ibvi

N, D, C = 32, 5, 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C))


def _data(kind: str) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)
    if kind == "width":
        x = torch.randn(N, D + 2, generator=g)
    elif kind == "integer":
        x = (10 * x).long()
    elif kind == "labels":
        y = y + C
    return TensorDataset(x, y)


def _train_map(data: TensorDataset) -> None:
    tb.train_map(_model(), data, tb.TrainConfig(epochs=1, progress=False))


def _train_ibvi(data: TensorDataset) -> None:
    vnet = tb.VariationalModel(_model(), init=True)
    train_ibvi(vnet, data, IBVIConfig(epochs=1, progress=False))


def _laplace(structure: str) -> Callable[[TensorDataset], None]:
    def fit(data: TensorDataset) -> None:
        tb.Laplace(_model(), structure=structure).fit(DataLoader(data, batch_size=16))

    return fit


def _projected(data: TensorDataset) -> None:
    tb.ProjectedPosterior(_model()).fit(DataLoader(data, batch_size=16))


FITS = {
    "train_map": _train_map,
    "train_ibvi": _train_ibvi,
    "laplace_diag": _laplace("diag"),
    "laplace_kron": _laplace("kron"),
    "projected": _projected,
}
MESSAGES = {
    "width": r"the model cannot take these inputs \(shape \(\d+, 7\), torch.float32, on cpu\): "
    r"mat1 and mat2 shapes cannot be multiplied",
    "integer": r"the model cannot take these inputs \(shape \(\d+, 5\), torch.int64, on cpu\)",
    "labels": r"class targets must lie in \[0, 2\] for 3 outputs, got values in \[3, 5\]",
}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@pytest.mark.parametrize("fit", sorted(FITS))
def test_a_fit_on_inputs_that_do_not_fit_the_model_names_them(fit: str, kind: str) -> None:
    with pytest.raises(tb.InputError, match=MESSAGES[kind]):
        FITS[fit](_data(kind))


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_predict_on_inputs_of_another_width_names_them(structure: str) -> None:
    loader = DataLoader(_data("ok"), batch_size=16)
    for posterior in (tb.Laplace(_model(), structure=structure), tb.ProjectedPosterior(_model())):
        posterior.fit(loader)
        with pytest.raises(tb.InputError, match=r"inputs \(shape \(4, 7\), torch.float32"):
            posterior.predict(torch.randn(4, D + 2))


def test_other_runtime_errors_of_the_model_are_not_relabelled() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise RuntimeError("a bug inside the model")

    with pytest.raises(RuntimeError, match="a bug inside the model"):
        tb.train_map(Broken(), _data("ok"), tb.TrainConfig(epochs=1, progress=False))


def test_a_model_without_trainable_parameters_is_a_clear_error() -> None:
    with pytest.raises(tb.InputError, match="no trainable parameters"):
        tb.train_map(nn.Identity(), _data("ok"), tb.TrainConfig(epochs=1, progress=False))
