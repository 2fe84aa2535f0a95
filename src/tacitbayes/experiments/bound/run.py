"""``tacitbayes bound``: PAC-Bayes bounds on a target task with a learned Kronecker prior vs isotropic ones.

Source task = the classes ``source_classes`` of the training split, target task =
``target_classes``; each is relabelled 0..k−1 in the order given, and one k-output network
serves both. Steps:

1. A MAP network on the source task (mean cross-entropy, weight decay wd), then
   ``Laplace(structure="kron")`` on it with its prior precision δ tuned by the evidence.
2. Three prior families, none of which sees target data (checked by data fingerprints):
   ``learned`` N(w_src, (β_l F_src + α δ I)⁻¹) (:meth:`KroneckerPrior.from_laplace`; each
   β > 0 of the grid on every layer, or on the hidden layers with β = 0 on the output layer,
   whose classes change; β = 0 everywhere, in the default grid, is ``isotropic_source`` with
   λ = αδ, so the learned family contains it), ``isotropic`` N(0, λ⁻¹ I) and
   ``isotropic_source`` N(w_src, λ⁻¹ I).
3. Per family, ``rounds`` rounds of: train a target MAP under a prior of the family (mean
   cross-entropy + penalty/N_t; from w_src, or from a fresh initialisation for ``isotropic``,
   where the penalty is weight decay), fit the target KFAC F_t (summed loss), and pick the prior
   hyper-parameters (α, β) or λ and the posterior temperature τ that minimise the ``kind`` bound
   of Q = N(w_t, τ (F_t + Λ_P)⁻¹) with a proxy L̂ (one pass over ``selection_size`` target
   examples, its own random numbers). The first round trains under α = β = 1 (the source
   posterior), λ = N_t·wd or λ = δ; the next under the last choice. With several rounds the
   first searches every other point of the isotropic axis (α or λ), the next ±2 points around
   the last choice. The learned prior's three precision terms are compressed to two; KL(Q‖P)
   is exact for the Q used. By default α δ runs over the λ grid, so the learned and isotropic
   families share their isotropic precisions. For the learned family the report adds KL(Q‖P)
   against β at the chosen α and τ (:mod:`~tacitbayes.experiments.bound.kl_profile`).
4. The bound holds for every Q at once, so τ and the training rounds (choices of Q) are free;
   only the prior grid costs ln|grid| (union bound). The reported L̂ is a fresh Monte Carlo
   estimate over all N_t examples with its own confidence term
   (:func:`tacitbayes.priors.pac_bayes_bound`, δ split in halves). MLPs draw an independent
   network per example and pass (local reparameterisation, K·N_t draws); other models draw
   ``mc_samples`` whole networks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tacitbayes.curvature import KFAC
from tacitbayes.data import DATASETS, BatchLoader, load_dataset
from tacitbayes.devices import check_device, dataset_to
from tacitbayes.errors import InputError
from tacitbayes.experiments.bound.kl_profile import beta_profile
from tacitbayes.experiments.bound.report import write_outputs
from tacitbayes.experiments.checks import (
    check_choice,
    check_fraction,
    check_positive_ints,
    check_positive_numbers,
)
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir
from tacitbayes.models import build_model
from tacitbayes.posteriors import Laplace
from tacitbayes.priors import (
    BOUND_KINDS,
    KroneckerGaussian,
    KroneckerPrior,
    catoni_bound,
    check_prior_independent,
    empirical_risk,
    empirical_risk_local,
    kl_inverse_bound,
    kl_terms,
    laplace_posterior,
    mcallester_bound,
    pac_bayes_bound,
    tempered_kl,
    train_with_prior,
    union_bound_cost,
)
from tacitbayes.search import check_grid_edge, edge_record
from tacitbayes.training import TrainConfig, evaluate_accuracy, train_map

MODELS = ("mlp", "lenet")
FAMILIES = ("learned", "isotropic", "isotropic_source")
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"width": 64, "epochs": 40, "lr": 3e-3},
    "fashion-mnist": {"width": 256, "epochs": 6, "lr": 1e-3},
    "mnist": {"width": 256, "epochs": 6, "lr": 1e-3},
}
GRIDS: dict[str, tuple[float, ...]] = {
    "betas": (0.0, 0.01, 0.1, 1.0, 10.0),
    "taus": (2.0, 1.5, 1.0, 0.9, 0.7, 0.5, 0.3, 0.1),
    "lambdas": tuple(10 ** (k / 4) for k in range(-2, 15)),  # 0.32 … 3162, quarter decades
}
QUICK = {
    "width": 16,
    "epochs": 3,
    "mc_samples": 2,
    "selection_size": 200,
    "rounds": 1,
    "betas": (0.0, 1.0),
    "taus": (1.0, 0.1),
    "lambdas": (1.0, 100.0),
}
BOUND_FNS: dict[str, Callable[[float, float, int, float], float]] = {
    "mcallester": mcallester_bound,
    "catoni": catoni_bound,
    "kl_inverse": kl_inverse_bound,
}
DELTA_MC_FRACTION = 0.5


@dataclass
class BoundSettings:
    """Everything that defines one ``bound`` run (None: a per-dataset or quick default)."""

    dataset: str = "digits"
    model: str = "mlp"
    width: int | None = None
    depth: int = 2
    activation: str = "relu"
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 1e-4
    delta: float = 0.05
    kind: str = "kl_inverse"
    mc_samples: int | None = None
    selection_size: int | None = None
    rounds: int | None = None
    alphas: tuple[float, ...] | None = None
    betas: tuple[float, ...] | None = None
    taus: tuple[float, ...] | None = None
    lambdas: tuple[float, ...] | None = None
    n_train: int | None = None
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"  # where the networks and data live: cpu, cuda, cuda:N or mps
    quick: bool = False
    data_dir: str | None = None
    out: str | None = None
    progress: bool = True

    def resolved(self) -> BoundSettings:
        """A copy with every default filled in and every value checked (InputError otherwise)."""
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        if self.model not in MODELS:
            raise InputError(f"bound supports the models {', '.join(MODELS)}, got {self.model!r}")
        base: dict[str, Any] = {**DEFAULTS[self.dataset], **GRIDS, "mc_samples": 10}
        base.update(selection_size=4000, rounds=3)  # the choices settle by the third round
        if self.quick:
            base.update(QUICK)
        s = replace(self)
        for name, value in base.items():
            if getattr(s, name) is None:
                setattr(s, name, value)
        _check(s)
        check_device(s.device)
        return s


def _check(s: BoundSettings) -> None:
    src, tgt = s.source_classes, s.target_classes
    for name, classes in (("source_classes", src), ("target_classes", tgt)):
        if (
            not classes
            or len(set(classes)) != len(classes)
            or not all(0 <= c < 10 for c in classes)
        ):
            raise InputError(f"{name} must be distinct classes in 0..9, got {list(classes)}")
    if set(src) & set(tgt):
        raise InputError(f"source and target classes overlap: {sorted(set(src) & set(tgt))}")
    if len(src) != len(tgt):
        raise InputError("source and target tasks need the same number of classes (one network)")
    check_fraction("delta", s.delta, closed_high=False)
    check_choice("bound kind", s.kind, BOUND_KINDS)
    check_positive_numbers(s, "taus", "lambdas")
    check_positive_numbers(s, "betas", zero_ok=True)  # β = 0: the isotropic prior at w_src
    if s.alphas is not None:  # None: α δ on the λ grid
        check_positive_numbers(s, "alphas")
    check_positive_ints(
        s, "width", "depth", "epochs", "batch_size", "mc_samples", "selection_size", "rounds"
    )
    if not (0 < s.lr < math.inf and s.weight_decay > 0):  # type: ignore[operator]
        raise InputError("lr and weight_decay must be positive (δ = N·wd is a prior precision)")


def _task(data: TensorDataset, classes: tuple[int, ...], what: str) -> TensorDataset:
    """The examples of ``classes``, relabelled 0..k−1 in the order given."""
    x, y = data.tensors
    keep = torch.isin(y, torch.tensor(classes))
    if not bool(keep.any()):
        raise InputError(f"the {what} split holds no example of the classes {list(classes)}")
    relabel = torch.full((max(int(y.max()), *classes) + 1,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return TensorDataset(x[keep], relabel[y[keep]])


def _build(s: BoundSettings, input_shape: tuple[int, int, int], k: int) -> nn.Module:
    """A fresh network (initialised on the CPU) on the run's device."""
    if s.model == "mlp":
        model = build_model(
            "mlp", input_shape, k, width=s.width, depth=s.depth, activation=s.activation
        )
    else:
        model = build_model("lenet", input_shape, k, activation=s.activation)
    return model.to(s.device)


def _config(s: BoundSettings, weight_decay: float = 0.0) -> TrainConfig:
    assert s.epochs is not None and s.lr is not None
    return TrainConfig(
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        weight_decay=weight_decay,
        seed=s.seed,
        progress=s.progress,
    )


def _risk(
    model: nn.Module, q: KroneckerGaussian, data: TensorDataset, draws: int, gen: torch.Generator
) -> tuple[float, int]:
    """(mean 0-1 error of Q, number of independent draws behind it)."""
    x, y = data.tensors
    if all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n in q.layers):
        return empirical_risk_local(model, q, x, y, draws, gen)
    return empirical_risk(model, q, x, y, draws, gen)[0], draws


def _families(
    s: BoundSettings, la: Laplace, source: nn.Module, xs: torch.Tensor, n_target: int
) -> dict[str, dict[str, Any]]:
    """Per family: description, prior maker, grid of (isotropic-axis index, hyper), start, init."""
    assert s.betas and s.lambdas
    delta = float(la.prior_precision.mean())
    alphas = s.alphas or tuple(v / delta for v in s.lambdas)
    lambdas = [(i, {"lambda": v}) for i, v in enumerate(s.lambdas)]
    iso = KroneckerPrior.isotropic
    layers = list(la.curvature.kfac.factors)
    output = layers[-1]

    def learned(h: dict[str, float]) -> KroneckerPrior:
        betas = {name: h["beta_output"] if name == output else h["beta"] for name in layers}
        return KroneckerPrior.from_laplace(la, h["alpha"], betas, source_inputs=xs)

    return {
        "learned": {
            "prior": "N(w_src, (β_l F_src + α δ I)⁻¹)",
            "make": learned,
            "profile": True,  # KL against β at the chosen α, τ (kl_profile)
            "grid": [(i, h) for i, a in enumerate(alphas) for h in _beta_options(a, s.betas)],
            "start": {"alpha": 1.0, "beta": 1.0, "beta_output": 1.0},
            "from_source": True,
        },
        "isotropic": {
            "prior": "N(0, λ⁻¹ I)",
            "make": lambda h: iso(source, h["lambda"]),
            "grid": lambdas,
            "start": {"lambda": n_target * s.weight_decay},  # weight decay wd
            "from_source": False,
        },
        "isotropic_source": {
            "prior": "N(w_src, λ⁻¹ I)",
            "make": lambda h: iso(source, h["lambda"], mean=source, source_inputs=xs),
            "grid": lambdas,
            "start": {"lambda": delta},
            "from_source": True,
        },
    }


def _beta_options(alpha: float, betas: tuple[float, ...]) -> list[dict[str, float]]:
    """Per α: β on every layer, or on the hidden layers only (β = 0 on the output layer).

    β = 0 everywhere (when the grid holds 0) is the isotropic prior at the source weights,
    so the learned family contains that prior; the output layer's own option lets a task
    with new classes keep the source curvature of the features without that of the head.
    """
    options = []
    for b in betas:
        options.append({"alpha": alpha, "beta": b, "beta_output": b})
        if b > 0:
            options.append({"alpha": alpha, "beta": b, "beta_output": 0.0})
    return options


def _candidates(
    grid: list[tuple[int, dict]], last: int | None, coarse: bool
) -> list[tuple[int, dict]]:
    """Every other point of the isotropic axis (``coarse``), ±2 steps around ``last``, or all."""
    if coarse:
        return [(i, h) for i, h in grid if i % 2 == 0]
    return [(i, h) for i, h in grid if last is None or abs(i - last) <= 2]


def _select(s, family, model, kfac, target, gen, last, coarse) -> dict[str, Any]:
    """The candidate × τ point with the smallest ``kind`` bound for a proxy L̂ on a subset.

    The union bound covers the whole grid, however the candidates are searched.
    """
    assert s.taus and s.selection_size
    n = len(target)
    idx = torch.randperm(n, generator=gen, device=gen.device)[: s.selection_size]
    subset = TensorDataset(*(t[idx] for t in target.tensors))
    cost, d_pb = union_bound_cost(len(family["grid"])), (1 - DELTA_MC_FRACTION) * s.delta
    best: dict[str, Any] | None = None
    for i, hyper in _candidates(family["grid"], last, coarse):
        prior = family["make"](hyper)
        q0 = laplace_posterior(prior, kfac, model)
        terms = kl_terms(q0, prior)
        for tau in s.taus:
            kl = max(float(tempered_kl(terms, tau, prior.tau)), 0.0)
            q = q0.tempered(tau)
            proxy = _risk(model, q, subset, 1, gen)[0]
            score = BOUND_FNS[s.kind](proxy, kl + cost, n, d_pb)
            if best is None or score < best["proxy_bound"]:
                best = {"prior_hyper": hyper, "tau": tau, "prior": prior, "q": q, "kl": kl, "i": i}
                best.update(proxy_risk=proxy, proxy_bound=score)
    assert best is not None
    return best


def _evaluate(s, family, source_state, data, target, test) -> dict[str, Any]:
    """Rounds of (train the target MAP under a prior, fit KFAC, select); then bound and test Q."""
    start = time.perf_counter()
    assert s.epochs and s.rounds
    hyper, last, rounds = family["start"], None, []
    for r in range(s.rounds):
        torch.manual_seed(s.seed + 1)
        model = _build(s, data.input_shape, len(s.target_classes))
        if family["from_source"]:
            model.load_state_dict(source_state)
        train_with_prior(model, target, family["make"](hyper), _config(s))
        kfac = KFAC(model, "cross_entropy", BatchLoader(target, 1024), reduction="sum")
        gen = torch.Generator(s.device).manual_seed(s.seed + r)
        best = _select(s, family, model, kfac, target, gen, last, r == 0 and s.rounds > 1)
        rounds.append(
            {"trained_with": hyper, "chosen": {**best["prior_hyper"], "tau": best["tau"]}}
        )
        rounds[-1]["proxy_bound"] = best["proxy_bound"]
        hyper, last = best["prior_hyper"], best["i"]
    selected = time.perf_counter()
    gen = torch.Generator(s.device).manual_seed(s.seed + 1000)
    q, prior = best["q"], best["prior"]
    mc_risk, draws = _risk(model, q, target, s.mc_samples, gen)
    grid = len(family["grid"])
    row = pac_bayes_bound(
        mc_risk, draws, best["kl"], len(target), s.delta, s.kind, grid, DELTA_MC_FRACTION
    )
    row.update(
        prior=family["prior"],
        hyperparameters={**best["prior_hyper"], "tau": best["tau"]},
        test_error=_risk(model, q, test, s.mc_samples, gen)[0],
        map_test_error=1.0 - evaluate_accuracy(model, test),
        map_train_error=1.0 - evaluate_accuracy(model, target),
        prior_independence=check_prior_independent(prior, target.tensors[0]),
        compression_error_max=max(q.compression_error.values()),
        rounds=rounds,
        selection_examples=min(s.selection_size, len(target)),
        selection_seconds=selected - start,
        seconds=time.perf_counter() - start,
    )
    if family.get("profile"):
        assert s.betas
        chosen = best["prior_hyper"]
        row["beta_profile"] = beta_profile(
            family["make"], model, kfac, chosen["alpha"], best["tau"], s.betas
        )
    return row


def grid_edges(
    name: str, family: dict[str, Any], taus: tuple[float, ...], chosen: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per axis of the family's grid (its hyper-parameters and τ): the edge record at ``chosen``."""
    axes = {k: [h[k] for _, h in family["grid"]] for k in chosen if k != "tau"}
    axes = {k: v for k, v in axes.items() if chosen[k] > 0 or min(v) < 0}  # β = 0 is a closed end
    axes["tau"] = list(taus)
    return {
        k: check_grid_edge(
            f"{name} prior {k}",
            values,
            chosen[k],
            high="a larger value might give a tighter bound",
            low="a smaller value might give a tighter bound",
            remedy="widen its grid (the bound pays ln|grid|)",
        )
        for k, values in axes.items()
    }


def checks(rows: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Bounds above the MC risk and the test error; the learned prior non-vacuous and tighter."""
    out = {
        "bounds_above_mc_risk": all(
            min(r["mcallester"], r["catoni"], r["kl_inverse"]) >= r["mc_risk"]
            for r in rows.values()
        ),
        "bounds_above_test_error": all(r["bound"] >= r["test_error"] for r in rows.values()),
    }
    if "learned" in rows:
        out["learned_non_vacuous"] = rows["learned"]["bound"] < 1
        for name, row in rows.items():
            if name != "learned":
                out[f"learned_tighter_than_{name}"] = rows["learned"]["bound"] < row["bound"]
    return out


def run_bound(settings: BoundSettings) -> dict[str, Any]:
    """Source MAP and Laplace, three prior families, their target posteriors and bounds; write outputs."""
    s = settings.resolved()
    with torch_threads(s.threads):
        return _run(s)


def _run(s: BoundSettings) -> dict[str, Any]:
    start = time.perf_counter()
    device = check_device(s.device)
    out = check_output_dir(s.out or f"runs/bound-{time.strftime('%Y%m%d-%H%M%S')}")
    data = load_dataset(s.dataset, s.data_dir, n_train=s.n_train, seed=s.seed, ood=False)
    source, target, source_test, test = (
        dataset_to(_task(split, classes, what), device)
        for split, what in ((data.train, "training"), (data.test, "test"))
        for classes in (s.source_classes, s.target_classes)
    )
    torch.manual_seed(s.seed)
    net = _build(s, data.input_shape, len(s.source_classes))
    train_map(net, source, _config(s, s.weight_decay), device=device)
    la = Laplace(net, "classification", "kron", prior_precision=len(source) * s.weight_decay)
    la.fit(BatchLoader(source, 1024))
    la.optimize_prior_precision()
    source_state = copy.deepcopy(net.state_dict())
    families = _families(s, la, net, source.tensors[0], len(target))
    rows = {n: _evaluate(s, fam, source_state, data, target, test) for n, fam in families.items()}
    for n, fam in families.items():
        assert s.taus
        rows[n]["searches"] = grid_edges(n, fam, s.taus, rows[n]["hyperparameters"])
    results = {
        "dataset": data.name,
        "model": s.model,
        "n_params": sum(p.numel() for p in net.parameters()),
        "device": str(device),
        "source_classes": list(s.source_classes),
        "target_classes": list(s.target_classes),
        "n_source": len(source),
        "n_target": len(target),
        "n_target_test": len(test),
        "delta": s.delta,
        "kind": s.kind,
        "source": {
            "test_error": 1.0 - evaluate_accuracy(net, source_test),
            "laplace_prior_precision": float(la.prior_precision.mean()),
            "searches": {"prior_precision_marglik": edge_record(la.tuning)},
        },
        "priors": rows,
        "checks": checks(rows),
        "seconds": time.perf_counter() - start,
        "settings": asdict(s),
        "versions": versions(),
    }
    write_outputs(results, out)
    results["out"] = str(out)
    return results
