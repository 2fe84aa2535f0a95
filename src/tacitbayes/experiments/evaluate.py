"""Evaluate a fitted method in distribution, under rotation shift and against an OOD set."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from tacitbayes import metrics
from tacitbayes.data import DataBundle, minibatches
from tacitbayes.experiments.methods import Predictor


def predict_dataset(
    predictor: Predictor, inputs: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Class probabilities for all ``inputs``, predicted in batches."""
    chunks = [predictor.predict(x) for (x,) in minibatches(TensorDataset(inputs), batch_size)]
    return torch.cat(chunks).detach().to(torch.float64)


def evaluate_predictor(
    predictor: Predictor, data: DataBundle, batch_size: int = 500
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics on the test set, the rotated test sets and the OOD set; also the test probabilities."""
    x_test, y_test = data.test.tensors
    start = time.perf_counter()
    probs = predict_dataset(predictor, x_test, batch_size)
    predict_seconds = time.perf_counter() - start
    result: dict[str, Any] = metrics.evaluate(probs, y_test)
    result["predict_seconds"] = predict_seconds
    if len(data.ood):
        probs_ood = predict_dataset(predictor, data.ood, batch_size)
        result["ood_auroc"] = metrics.ood_auroc(probs, probs_ood, score="max_prob")
        result["ood_auroc_entropy"] = metrics.ood_auroc(probs, probs_ood, score="entropy")
    shift = {}
    for angle in data.angles:
        x_rot, y_rot = data.rotated_test(angle).tensors
        shift[f"{angle:g}"] = metrics.evaluate(predict_dataset(predictor, x_rot, batch_size), y_rot)
    if shift:
        result["shift_accuracy"] = sum(s["accuracy"] for s in shift.values()) / len(shift)
        result["shift_nll"] = sum(s["nll"] for s in shift.values()) / len(shift)
        result["shift"] = shift
    return result, probs
