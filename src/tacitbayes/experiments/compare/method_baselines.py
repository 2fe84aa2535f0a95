"""``compare`` baselines ``map_temperature`` and ``ensemble``: the strongest cheap competitors.

* ``map_temperature``: the trained MAP network with one temperature T on its logits,
  fitted on the validation split's NLL (:func:`tacitbayes.calibration.fit_logit_temperature`,
  with the same N(0, 0.5²) prior on log T that IBVI's temperature uses). Without
  validation data T = 1 (MAP itself).
* ``ensemble``: M networks (``ENSEMBLE_SIZE`` = 5) of the MAP architecture trained with
  MAP's settings from M seeds (initialisation and shuffling): the run's MAP network is
  member 0, members 1..M−1 are trained here with seeds seed + 1000·m. Predictions
  average the members' softmax (Lakshminarayanan et al. 2017); the members' logits
  are the samples of the mutual-information and variance OOD scores. In a compare run
  member m keeps its training checkpoint in ``OUT/ensemble-m.pt`` (``--resume`` continues it).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import torch

from tacitbayes.calibration import fit_logit_temperature
from tacitbayes.experiments.compare.registry import (
    FitContext,
    NetworkPredictor,
    Predictor,
    register_method,
)
from tacitbayes.models import build_model
from tacitbayes.training import train_map

__all__ = ["ENSEMBLE_SIZE", "EnsemblePredictor", "fit_ensemble", "fit_map_temperature"]

ENSEMBLE_SIZE = 5
SEED_STRIDE = 1000  # member m trains with seed + 1000·m (no overlap with nearby --seed values)


class TemperedPredictor(NetworkPredictor):
    """softmax(f(θ*, x) / T)."""

    def __init__(self, model: torch.nn.Module, temperature: float, info: dict[str, Any]) -> None:
        super().__init__(model, info)
        self.temperature = temperature

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(f(θ*, x) / T)."""
        self.model.eval()
        return torch.softmax(self.model(x) / self.temperature, dim=-1)


@register_method("map_temperature")
def fit_map_temperature(ctx: FitContext) -> Predictor:
    """MAP with a temperature T fitted on the validation NLL (T = 1 without validation data)."""
    info: dict[str, Any] = {"temperature": 1.0}
    if len(ctx.data.val):
        val_x, val_y = ctx.data.val.tensors
        ctx.model.eval()
        with torch.no_grad():
            logits = torch.cat([ctx.model(val_x[i : i + 1000]) for i in range(0, len(val_x), 1000)])
        temperature, record = fit_logit_temperature(logits, val_y)
        info = {"temperature": temperature, "searches": {"temperature": record}}
    return TemperedPredictor(ctx.model, info["temperature"], info)


class EnsemblePredictor:
    """(1/M) Σ_m softmax(f(θ_m, x)) over M independently trained networks."""

    def __init__(self, members: list[torch.nn.Module], info: dict[str, Any]) -> None:
        self.members, self.info = members, info

    @torch.no_grad()
    def predict_samples(self, x: torch.Tensor) -> torch.Tensor:
        """The members' logits, shape (M, len(x), n_classes)."""
        for m in self.members:
            m.eval()
        return torch.stack([m(x) for m in self.members])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of shape (len(x), n_classes)."""
        return torch.softmax(self.predict_samples(x), -1).mean(0)


@register_method("ensemble")
def fit_ensemble(ctx: FitContext) -> Predictor:
    """A deep ensemble of ENSEMBLE_SIZE MAP networks (the run's MAP network and M − 1 more)."""
    members = [ctx.model]
    start = time.perf_counter()
    for m in range(1, ENSEMBLE_SIZE):
        seed = ctx.seed + SEED_STRIDE * m
        torch.manual_seed(seed)
        model = build_model(
            ctx.model_name, ctx.data.input_shape, ctx.data.n_classes, **ctx.model_options
        ).to(ctx.device)
        config = dataclasses.replace(copy.copy(ctx.train_config), seed=seed)
        checkpoint, resume = ctx.training_checkpoint(f"ensemble-{m}")
        train_map(
            model,
            ctx.data.train,
            config,
            val_set=ctx.data.val,
            device=ctx.device,
            checkpoint=checkpoint,
            resume=resume,
        )
        model.eval()
        members.append(model)
    info = {
        "ensemble_size": ENSEMBLE_SIZE,
        "member_seeds": [ctx.seed + SEED_STRIDE * m for m in range(ENSEMBLE_SIZE)],
        "train_seconds": time.perf_counter() - start,
    }
    return EnsemblePredictor(members, info)
