"""The laplace-torch-style surface of the posteriors: structure keywords and prediction options.

laplace-torch's ``Laplace(model, likelihood, subset_of_weights=..., hessian_structure=...)``
maps to ``structure=`` (:data:`LAPLACE_TORCH_STRUCTURES`); laplace-torch's defaults
(``subset_of_weights="last_layer"``, ``hessian_structure="kron"``) fill in a keyword left
out, so a call never silently means something else than it does there.

Predictions ``posterior(x, pred_type, link_approx)``: ``pred_type="glm"`` is the
linearised network f(θ*, x) + J(x)δθ, ``"nn"`` the network itself at θ* + δθ (Monte Carlo
only). ``link_approx`` maps the Gaussian N(f(θ*, x), Σ_f) of the glm outputs to class
probabilities in closed form (``"probit"``, ``"bridge"``; :mod:`tacitbayes.posteriors.glm`)
or by Monte Carlo (``"mc"``, the existing ``predict``). Regression with ``pred_type="glm"``
is Gaussian already: (f(θ*, x), diag Σ_f + σ²) in closed form; there ``"probit"`` (the
default, as in laplace-torch) is ignored and ``"mc"`` gives the Monte-Carlo estimate.
"""

from __future__ import annotations

from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.posteriors.glm import laplace_bridge, probit

__all__ = [
    "LAPLACE_TORCH_STRUCTURES",
    "PRED_TYPES",
    "VALID_PREDICTIONS",
    "check_prediction",
    "closed_form_output",
    "resolve_structure",
    "validation_prediction",
]

PRED_TYPES = ("glm", "nn")
LAPLACE_TORCH_STRUCTURES = {
    ("all", "diag"): "diag",
    ("all", "kron"): "kron",
    ("last_layer", "full"): "last_layer",
}
LAPLACE_TORCH_DEFAULTS = {"subset_of_weights": "last_layer", "hessian_structure": "kron"}
VALID_PREDICTIONS = {
    "classification": (("glm", "probit"), ("glm", "bridge"), ("glm", "mc"), ("nn", "mc")),
    "binary": (("glm", "probit"), ("glm", "mc"), ("nn", "mc")),
    "regression": (("glm", "probit"), ("glm", "mc"), ("nn", "mc")),
}


def _mapping_help() -> str:
    pairs = ", ".join(
        f"subset_of_weights={s!r} + hessian_structure={h!r} → structure={t!r}"
        for (s, h), t in LAPLACE_TORCH_STRUCTURES.items()
    )
    return f"supported: {pairs}"


def resolve_structure(
    structure: str | None, subset_of_weights: str | None, hessian_structure: str | None
) -> str:
    """The native structure of ``structure=`` and/or laplace-torch's (subset_of_weights, hessian_structure)."""
    if subset_of_weights is None and hessian_structure is None:
        return "kron" if structure is None else structure
    subset = (
        LAPLACE_TORCH_DEFAULTS["subset_of_weights"]
        if subset_of_weights is None
        else subset_of_weights
    )
    hessian = (
        LAPLACE_TORCH_DEFAULTS["hessian_structure"]
        if hessian_structure is None
        else hessian_structure
    )
    mapped = LAPLACE_TORCH_STRUCTURES.get((subset, hessian))
    if mapped is None:
        filled = [
            f"{k}={v!r} (laplace-torch's default)"
            for k, v, given in (
                ("subset_of_weights", subset, subset_of_weights),
                ("hessian_structure", hessian, hessian_structure),
            )
            if given is None
        ]
        note = f"; {' and '.join(filled)} was filled in" if filled else ""
        raise InputError(
            f"subset_of_weights={subset!r} with hessian_structure={hessian!r} is not "
            f"supported{note}; {_mapping_help()}"
        )
    if structure is not None and structure != mapped:
        raise InputError(
            f"structure={structure!r} contradicts subset_of_weights={subset!r} + "
            f"hessian_structure={hessian!r} (structure={mapped!r}); give one of them; "
            f"{_mapping_help()}"
        )
    return mapped


def _combinations(likelihood: str) -> str:
    return ", ".join(f"({p!r}, {k!r})" for p, k in VALID_PREDICTIONS[likelihood])


def check_prediction(likelihood: str, pred_type: str, link_approx: str) -> bool:
    """True when (pred_type, link_approx) is a closed-form glm predictive, False for Monte Carlo."""
    if likelihood not in VALID_PREDICTIONS:
        raise InputError(f"no predictive for likelihood {likelihood!r}")
    if (pred_type, link_approx) not in VALID_PREDICTIONS[likelihood]:
        extra = ""
        if pred_type not in PRED_TYPES:
            extra = f"; pred_type must be one of {list(PRED_TYPES)}"
        elif link_approx == "bridge_norm":
            extra = "; the normalised bridge of laplace-torch is not implemented, use 'bridge'"
        raise InputError(
            f"pred_type={pred_type!r} with link_approx={link_approx!r} is not supported for "
            f"likelihood={likelihood!r}{extra}; valid (pred_type, link_approx): "
            f"{_combinations(likelihood)}"
        )
    return link_approx != "mc"


def validation_prediction(
    method: str,
    likelihood: str,
    pred_type: str | None,
    link_approx: str | None,
    linearized: bool | None,
) -> tuple[bool, str]:
    """(linearized, link_approx) of the validation predictive; other methods refuse both keywords."""
    if method != "validation":
        if pred_type is not None or link_approx is not None:
            raise InputError(
                f"pred_type and link_approx choose the predictive of method='validation'; "
                f"method={method!r} does not predict (the evidence needs no predictive)"
            )
        return True if linearized is None else bool(linearized), "mc"
    if pred_type is None:
        pred_type = "nn" if linearized is False else "glm"
    elif linearized is not None and bool(linearized) != (pred_type == "glm"):
        raise InputError(
            f"linearized={linearized} contradicts pred_type={pred_type!r}; give one of them"
        )
    link = "mc" if link_approx is None else link_approx
    check_prediction(likelihood, pred_type, link)
    return pred_type == "glm", link


def closed_form_output(
    likelihood: str, mean: Tensor, cov: Tensor, link_approx: str, noise_var: float = 0.0
) -> Tensor | tuple[Tensor, Tensor]:
    """Regression: (μ, diag Σ_f + σ²); classification: probit or bridge probabilities of N(μ, Σ_f)."""
    if likelihood == "regression":
        # a variance is never below σ²: roundoff can leave a null direction at −1e−18
        return mean, cov.diagonal(dim1=-2, dim2=-1).clamp_min(0) + noise_var
    if link_approx == "probit":
        return probit(mean, cov)
    return laplace_bridge(mean, cov)
