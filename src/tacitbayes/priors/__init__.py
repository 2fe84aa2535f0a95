"""Learned Kronecker priors, Kronecker/diagonal Gaussians, PAC-Bayes bounds (docs/methods.md §4)."""

from __future__ import annotations

from tacitbayes.priors.bounds import (
    BOUND_KINDS,
    CATONI_GRID,
    binary_kl,
    catoni_bound,
    catoni_search,
    kl_inverse,
    kl_inverse_bound,
    mcallester_bound,
    pac_bayes_bound,
    sample_convergence_bound,
    union_bound_cost,
)
from tacitbayes.priors.diagonal import DiagonalGaussian, DiagonalPrior
from tacitbayes.priors.kronecker_gaussian import (
    KroneckerGaussian,
    LayerSlot,
    ParameterLayout,
    kl_divergence,
    kl_terms,
    tempered_kl,
)
from tacitbayes.priors.kronecker_prior import (
    KroneckerPrior,
    check_prior_independent,
    data_fingerprint,
    laplace_posterior,
)
from tacitbayes.priors.risk import empirical_risk, empirical_risk_local, local_linear_output
from tacitbayes.priors.training import train_with_prior

__all__ = [
    "BOUND_KINDS",
    "CATONI_GRID",
    "DiagonalGaussian",
    "DiagonalPrior",
    "KroneckerGaussian",
    "KroneckerPrior",
    "LayerSlot",
    "ParameterLayout",
    "binary_kl",
    "catoni_bound",
    "catoni_search",
    "check_prior_independent",
    "data_fingerprint",
    "empirical_risk",
    "empirical_risk_local",
    "kl_divergence",
    "kl_inverse",
    "kl_inverse_bound",
    "kl_terms",
    "laplace_posterior",
    "local_linear_output",
    "mcallester_bound",
    "pac_bayes_bound",
    "sample_convergence_bound",
    "tempered_kl",
    "train_with_prior",
    "union_bound_cost",
]
