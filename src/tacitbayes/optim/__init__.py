"""Variational optimizers: IVON and variational gradient descent, sampled into the model."""

from __future__ import annotations

from tacitbayes.optim.ivon import IVON
from tacitbayes.optim.sampling import SampledOptimizer, sampled_predict
from tacitbayes.optim.vgd import VariationalGD

__all__ = ["IVON", "SampledOptimizer", "VariationalGD", "sampled_predict"]
