"""PAC-Bayes bounds on the 0-1 risk L(Q) of a posterior Q, from its empirical risk L̂(Q) on n examples.

Every bound holds with probability ≥ 1 − δ over the n examples when the prior P does not
depend on them (a prior learned on another task is fine):

* McAllester (Maurer 2004 form): L ≤ L̂ + √((KL + ln(2√n/δ)) / (2n));
* kl-inverse (Seeger 2002, Maurer 2004): L ≤ kl⁻¹(L̂, (KL + ln(2√n/δ)) / n), never looser than
  McAllester (Pinsker) and always ≤ 1;
* Catoni (2007): L ≤ (1 − exp(−c L̂ − (KL + ln(1/δ))/n)) / (1 − e^{−c}) for a c > 0 fixed in
  advance. The bound is often stated with inf over c; the infimum is only valid with a union
  bound, so c is optimised over a fixed geometric grid and ln|grid| is added to KL + ln(1/δ).

Choosing hyper-parameters (of P or Q) from a grid of G points by the bound costs ln G, added to
KL (:func:`union_bound_cost`). L̂(Q) estimated by Monte Carlo needs its own confidence term,
:func:`sample_convergence_bound`; :func:`pac_bayes_bound` splits δ between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tacitbayes.errors import InputError
from tacitbayes.search import check_grid_edge

__all__ = [
    "BOUND_KINDS",
    "CATONI_GRID",
    "binary_kl",
    "catoni_bound",
    "catoni_search",
    "kl_inverse",
    "kl_inverse_bound",
    "mcallester_bound",
    "pac_bayes_bound",
    "sample_convergence_bound",
    "union_bound_cost",
]

CATONI_GRID = tuple(10 ** (k / 10) for k in range(-20, 31))  # c = 0.01 … 1000, 51 points
BOUND_KINDS = ("mcallester", "catoni", "kl_inverse")


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    return float(value)


def _risk(name: str, value: object) -> float:
    v = _real(name, value)
    if not 0 <= v <= 1:
        raise InputError(f"{name} must lie in [0, 1], got {v}")
    return v


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer ≥ 1, got {value!r}")
    return value


def _delta(value: object) -> float:
    v = _real("delta", value)
    if not 0 < v < 1:
        raise InputError(f"delta must lie in (0, 1), got {v}")
    return v


def _kl(value: object) -> float:
    v = _real("kl", value)
    if not 0 <= v < math.inf:
        raise InputError(f"kl must be finite and ≥ 0, got {v}")
    return v


def binary_kl(q: float, p: float) -> float:
    """kl(q‖p) = q ln(q/p) + (1 − q) ln((1 − q)/(1 − p)), with 0 ln 0 = 0 (inf if p ∈ {0, 1} ≠ q)."""
    q, p = _risk("q", q), _risk("p", p)
    out = 0.0
    for a, b in ((q, p), (1 - q, 1 - p)):
        if a > 0:
            if b == 0:
                return math.inf
            out += a * math.log(a / b)
    return max(out, 0.0)


def kl_inverse(q: float, c: float, tol: float = 1e-10) -> float:
    """sup{p ∈ [q, 1] : kl(q‖p) ≤ c}, by bisection to ``tol``."""
    q, c = _risk("q", q), _real("c", c)
    if c < 0:
        raise InputError(f"c must be ≥ 0, got {c}")
    if q == 1 or binary_kl(q, 1.0) <= c:
        return 1.0
    lo, hi = q, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if binary_kl(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return hi


def union_bound_cost(grid_size: int) -> float:
    """ln |grid|: the price of choosing among ``grid_size`` candidates with a union bound."""
    return math.log(_count("grid_size", grid_size))


def mcallester_bound(emp_risk: float, kl: float, n: int, delta: float) -> float:
    """L̂ + √((KL + ln(2√n/δ)) / (2n))."""
    emp_risk, kl, n, delta = _risk("emp_risk", emp_risk), _kl(kl), _count("n", n), _delta(delta)
    return emp_risk + math.sqrt((kl + math.log(2 * math.sqrt(n) / delta)) / (2 * n))


def kl_inverse_bound(emp_risk: float, kl: float, n: int, delta: float) -> float:
    """kl⁻¹(L̂, (KL + ln(2√n/δ)) / n)."""
    emp_risk, kl, n, delta = _risk("emp_risk", emp_risk), _kl(kl), _count("n", n), _delta(delta)
    return kl_inverse(emp_risk, (kl + math.log(2 * math.sqrt(n) / delta)) / n)


def _catoni(emp_risk: float, kl: float, n: int, delta: float, c: float) -> float:
    return -math.expm1(-c * emp_risk - (kl + math.log(1 / delta)) / n) / -math.expm1(-c)


def catoni_search(
    emp_risk: float,
    kl: float,
    n: int,
    delta: float,
    c_grid: Sequence[float] | None = None,
    c: float | None = None,
) -> tuple[float, float]:
    """(bound, c): Catoni at a fixed c, or its minimum over ``c_grid`` with ln|grid| added to KL."""
    emp_risk, kl, n, delta = _risk("emp_risk", emp_risk), _kl(kl), _count("n", n), _delta(delta)
    if c is not None:
        if c_grid is not None:
            raise InputError("give either a fixed c or a c_grid, not both")
        grid, cost = [_real("c", c)], 0.0
    else:
        grid = [_real("c_grid entry", v) for v in (CATONI_GRID if c_grid is None else c_grid)]
        if not grid:
            raise InputError("c_grid must not be empty")
        cost = math.log(len(grid))
    if any(not 0 < v < math.inf for v in grid):
        raise InputError(f"Catoni's c must be finite and > 0, got {grid}")
    return min((_catoni(emp_risk, kl + cost, n, delta, v), v) for v in grid)


def catoni_bound(
    emp_risk: float,
    kl: float,
    n: int,
    delta: float,
    c_grid: Sequence[float] | None = None,
    c: float | None = None,
) -> float:
    """min_{c ∈ grid} (1 − exp(−c L̂ − (KL + ln|grid| + ln(1/δ))/n)) / (1 − e^{−c}), or at a fixed c."""
    return catoni_search(emp_risk, kl, n, delta, c_grid, c)[0]


def sample_convergence_bound(mc_risk: float, m: int, delta: float) -> float:
    """kl⁻¹(L̂_m, ln(2/δ)/m): bounds L̂(Q) from the mean of m independent [0, 1] draws of it."""
    mc_risk, m, delta = _risk("mc_risk", mc_risk), _count("m", m), _delta(delta)
    return kl_inverse(mc_risk, math.log(2 / delta) / m)


def pac_bayes_bound(
    mc_risk: float,
    m: int,
    kl: float,
    n: int,
    delta: float,
    kind: str = "kl_inverse",
    grid_size: int = 1,
    delta_mc_fraction: float = 0.5,
) -> dict[str, Any]:
    """Every term of L(Q) ≤ bound(L̂⁺, KL + ln G, n, δ_pb) with L̂⁺ = kl⁻¹(L̂_m, ln(2/δ_mc)/m).

    δ_mc = ``delta_mc_fraction``·δ goes to the Monte Carlo estimate L̂_m (m independent draws),
    δ_pb = δ − δ_mc to the PAC-Bayes bound; a union bound makes both hold with probability
    ≥ 1 − δ. G = ``grid_size`` hyper-parameter candidates. ``bound`` is the one of ``kind``.
    ``catoni_c_search``: whether Catoni's c stopped at an end of ``CATONI_GRID`` (then warns).
    """
    if kind not in BOUND_KINDS:
        raise InputError(f"unknown bound kind {kind!r}; choose one of {list(BOUND_KINDS)}")
    delta = _delta(delta)
    frac = _real("delta_mc_fraction", delta_mc_fraction)
    if not 0 < frac < 1:
        raise InputError(f"delta_mc_fraction must lie in (0, 1), got {frac}")
    kl, n = _kl(kl), _count("n", n)
    d_mc, d_pb = frac * delta, (1 - frac) * delta
    upper = sample_convergence_bound(mc_risk, m, d_mc)
    cost = union_bound_cost(grid_size)
    catoni, c = catoni_search(upper, kl + cost, n, d_pb)
    out = {
        "mc_risk": float(mc_risk),
        "mc_draws": m,
        "emp_risk_upper": upper,
        "kl": kl,
        "grid_size": grid_size,
        "union_cost": cost,
        "n": n,
        "delta": delta,
        "delta_mc": d_mc,
        "delta_pac_bayes": d_pb,
        "mcallester": mcallester_bound(upper, kl + cost, n, d_pb),
        "catoni": catoni,
        "catoni_c": c,
        "catoni_c_search": check_grid_edge(
            "Catoni's c", CATONI_GRID, c, remedy="the Catoni bound could be tighter off its grid"
        ),
        "kl_inverse": kl_inverse_bound(upper, kl + cost, n, d_pb),
        "kind": kind,
    }
    out["bound"] = out[kind]
    return out
