"""Evaluate a fitted method in distribution, under rotation shift and against an OOD set."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from tacitbayes import metrics
from tacitbayes.data import DataBundle, minibatches
from tacitbayes.experiments.compare.registry import Predictor


def predict_dataset(
    predictor: Predictor, inputs: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Class probabilities for all ``inputs``, predicted in batches."""
    return predict_with_scores(predictor, inputs, batch_size)[0]


def predict_with_scores(
    predictor: Predictor, inputs: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class probabilities for ``inputs`` and, for a sampling method, the epistemic scores (on the CPU).

    A predictor with ``predict_samples(x)`` (logits of shape (S, N, C)) gets the mutual
    information (BALD), the summed logit variance and the sample effect per input
    (:func:`sample_effect`); others get none.
    """
    probs, mi, var, effect = [], [], [], []
    sampled = hasattr(predictor, "predict_samples")
    for (x,) in minibatches(TensorDataset(inputs), batch_size):
        if sampled:
            logits = predictor.predict_samples(x).detach().cpu().to(torch.float64)  # type: ignore[attr-defined]
            sample_probs = torch.softmax(logits, -1)
            probs.append(sample_probs.mean(0))
            mi.append(metrics.mutual_information(sample_probs))
            var.append(metrics.logit_variance(logits))
            effect.append(sample_effect(logits))
        else:
            probs.append(predictor.predict(x).detach().cpu().to(torch.float64))
    scores = {}
    if sampled:
        scores = {"mi": torch.cat(mi), "variance": torch.cat(var), "effect": torch.cat(effect)}
    return torch.cat(probs), scores


def sample_effect(logits: torch.Tensor) -> torch.Tensor:
    """½ Σ_c |(1/S) Σ_s softmax(f_s)_c − softmax((1/S) Σ_s f_s)_c| per input, for logits (S, N, C).

    How far averaging the samples' probabilities moves the prediction from the single
    network at the samples' mean logits: 0 when every sample predicts alike.
    """
    mixture = torch.softmax(logits, -1).mean(0)
    single = torch.softmax(logits.mean(0), -1)
    return 0.5 * (mixture - single).abs().sum(-1)


def evaluate_train(
    predictor: Predictor, data: DataBundle, batch_size: int = 500
) -> tuple[dict[str, float], torch.Tensor]:
    """Training-set NLL and accuracy of the predictive (does it keep what MAP fitted?), and its probabilities."""
    x_train, y_train = data.train.tensors
    probs = predict_dataset(predictor, x_train, batch_size)
    y = y_train.cpu()
    return {"train_nll": metrics.nll(probs, y), "train_accuracy": metrics.accuracy(probs, y)}, probs


def evaluate_predictor(
    predictor: Predictor, data: DataBundle, batch_size: int = 500
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metrics on the test set, the rotated test sets and the OOD set; the probabilities ("test", "ood")."""
    x_test, y_test = data.test.tensors
    start = time.perf_counter()
    probs, scores = predict_with_scores(predictor, x_test, batch_size)
    predict_seconds = time.perf_counter() - start
    result: dict[str, Any] = metrics.evaluate(probs, y_test)
    result["predict_seconds"] = predict_seconds
    effect = scores.pop("effect", None)  # not an OOD score: its mean is reported as it is
    if effect is not None:
        result["sample_effect"] = float(effect.mean())
    arrays = {"test": probs}
    if len(data.ood):
        probs_ood, scores_ood = predict_with_scores(predictor, data.ood, batch_size)
        arrays["ood"] = probs_ood
        result["ood_auroc"] = metrics.ood_auroc(probs, probs_ood, score="max_prob")
        result["ood_auroc_entropy"] = metrics.ood_auroc(probs, probs_ood, score="entropy")
        effect_ood = scores_ood.pop("effect", None)
        if effect_ood is not None:
            result["sample_effect_ood"] = float(effect_ood.mean())
        for name in scores:
            result[f"ood_auroc_{name}"] = metrics.auroc_from_scores(scores[name], scores_ood[name])
    shift = {}
    for angle in data.angles:
        x_rot, y_rot = data.rotated_test(angle).tensors
        shift[f"{angle:g}"] = metrics.evaluate(predict_dataset(predictor, x_rot, batch_size), y_rot)
    if shift:
        result["shift_accuracy"] = sum(s["accuracy"] for s in shift.values()) / len(shift)
        result["shift_nll"] = sum(s["nll"] for s in shift.values()) / len(shift)
        result["shift"] = shift
    return result, arrays
