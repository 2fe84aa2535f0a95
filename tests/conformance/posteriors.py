"""Every posterior and predictive of tacitbayes as one fit function, and the contract of a cell.

A fit takes a case (trained model and data) and a loader and returns named values in two
groups: ``fit`` (curvature, prior precision, evidence, trained weights: held to 1e-6
relative) and ``pred`` (seeded predictions: 1e-5 relative), plus ``checks`` that must
hold on their own (the projected posterior's null-space residual ≤ tol).

The contract (:func:`run_cell`): the fit on the loader equals the same fit on the plain
list of (x, y) tuples of the same rows in the same order, every value finite; or the
fit raises ONE documented tacitbayes error (InputError or DataError) with a one-line
message. Anything else (a raw torch error, NaN, a mismatch) fails the cell.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import tacitbayes as tb
from tacitbayes.batches import call_model, read_batch
from tacitbayes.errors import DataError, InputError
from tacitbayes.likelihoods import mean_loss

from .loaders import LoaderSpec, tuple_loader
from .models import Case

FIT_RTOL = 1e-6
PRED_RTOL = 1e-5
N_SAMPLES = 8

Values = dict[str, dict[str, Tensor]]


def _t(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().clone().to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def _pred(out: Any) -> dict[str, Tensor]:
    """A predictive: probabilities, or (mean, variance) for regression."""
    if isinstance(out, tuple):
        return {"mean": _t(out[0]), "variance": _t(out[1])}
    return {"probs": _t(out)}


def _flat(params: Any) -> Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params])


TRAIN_SEED = 0  # torch.manual_seed before a training pass; train_ibvi seeds (seed, epoch) = 0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _trainable(model: torch.nn.Module, names: Any) -> tuple[bool, str]:
    """(every covered parameter has requires_grad=True, the frozen ones named)."""
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    covered_frozen = [n for n in names if n in frozen]
    return not covered_frozen, f"covers frozen parameters {covered_frozen}"


# ---------------------------------------------------------------------- the fits


def laplace(structure: str) -> Callable[[Case, Any], Values]:
    def fit(case: Case, loader: Any) -> Values:
        la = tb.Laplace(case.fresh_model(), case.likelihood, structure=structure)
        la.fit(loader)
        out: Values = {"fit": {}, "pred": {}, "checks": {}}
        f = out["fit"]
        f["n_data"] = _t(la.n_data)
        f["loss_sum"] = _t(la.loss_sum)
        f["log_marglik(delta=1)"] = _t(la.log_marginal_likelihood(1.0))
        f["log_marglik(delta=10)"] = _t(la.log_marginal_likelihood(10.0))
        f["posterior_variance(delta=1)"] = _t(la.posterior_variance())
        if case.likelihood == "regression":
            f["sigma_noise(fit)"] = _t(la.sigma_noise)
        la.optimize_prior_precision()
        f["prior_precision"] = _t(la.prior_precision)
        f["log_marglik(tuned)"] = _t(la.log_marginal_likelihood())
        if case.likelihood == "regression":
            f["sigma_noise(tuned)"] = _t(la.sigma_noise)
        for k, v in _pred(la.predict(case.x_test, n_samples=N_SAMPLES)).items():
            out["pred"][f"glm-mc.{k}"] = v
        nn_pred = la.predict(case.x_test, n_samples=N_SAMPLES, linearized=False)
        for k, v in _pred(nn_pred).items():
            out["pred"][f"nn-mc.{k}"] = v
        for k, v in _pred(la(case.x_test)).items():
            out["pred"][f"glm-probit.{k}"] = v
        out["checks"]["covers trainable parameters only"] = _trainable(la.model, la.param_names)
        return out

    return fit


def projected(solver: str = "auto", loss_projected: bool = False) -> Callable[[Case, Any], Values]:
    def fit(case: Case, loader: Any) -> Values:
        post = tb.ProjectedPosterior(
            case.fresh_model(), case.likelihood, solver=solver, loss_projected=loss_projected
        )
        post.fit(loader)
        post.optimize_prior_precision(n_samples=N_SAMPLES)
        out: Values = {"fit": {}, "pred": {}, "checks": {}}
        out["fit"]["n_fit"] = _t(post.n_fit)
        out["fit"]["prior_precision"] = _t(post.prior_precision)
        if case.likelihood == "regression":
            out["fit"]["sigma_noise"] = _t(post.sigma_noise)
        for k, v in _pred(post.predict(case.x_test, n_samples=N_SAMPLES)).items():
            out["pred"][f"glm-mc.{k}"] = v
        nn_pred = post.predict(case.x_test, n_samples=N_SAMPLES, linearized=False)
        for k, v in _pred(nn_pred).items():
            out["pred"][f"nn-mc.{k}"] = v
        if solver == "gram" and not loss_projected:
            for k, v in _pred(post(case.x_test)).items():
                out["pred"][f"glm-probit.{k}"] = v
        residual = post.null_space_residual(n_samples=N_SAMPLES)
        out["checks"]["null-space residual <= tol"] = (
            math.isfinite(residual) and residual <= post.tol,
            f"residual {residual:.3g}, tol {post.tol:g}",
        )
        if solver != "auto":
            out["checks"]["solver used"] = (post.solver_used == solver, f"{post.solver_used}")
        out["checks"]["covers trainable parameters only"] = _trainable(
            post.model, list(post._fitted().params)
        )
        return out

    return fit


def variational(case: Case, loader: Any) -> Values:
    """VariationalModel: wrap, one pass of SGD steps on expected_loss over the loader, predict."""
    torch.manual_seed(1)  # the factors' initial draw
    vnet = tb.VariationalModel(case.fresh_model(), layers=case.var_layers, rank=2, init=False)
    opt = vnet.optimizer(torch.optim.SGD, lr=1e-2)
    gen = _gen(0)
    vnet.train()
    torch.manual_seed(TRAIN_SEED)  # the loader's shuffle: the order train_batches recorded
    for batch in loader:
        x, y = read_batch(batch)
        opt.zero_grad()
        vnet.expected_loss(x, y, loss=case.loss, generator=gen).backward()
        opt.step()
    out: Values = {"fit": {"params": _flat(vnet.parameters())}, "pred": {}, "checks": {}}
    pred = vnet.predict(
        case.x_test, n_samples=N_SAMPLES, generator=_gen(1), likelihood=case.likelihood
    )
    out["pred"].update(_pred(pred))
    out["checks"]["covers trainable parameters only"] = _trainable(vnet.model, vnet.var_names)
    return out


def ibvi(case: Case, loader: Any) -> Values:
    """VariationalModel trained by the library's own loop, train_ibvi (one epoch), then predict."""
    torch.manual_seed(1)  # the factors' initial draw
    vnet = tb.VariationalModel(case.fresh_model(), layers=case.var_layers, rank=2, init=False)
    config = tb.variational.IBVIConfig(
        epochs=1, batch_size=case.batch_size, lr=1e-2, loss=case.loss, seed=0, progress=False
    )
    tb.variational.train_ibvi(vnet, loader, config)
    out: Values = {"fit": {"params": _flat(vnet.parameters())}, "pred": {}, "checks": {}}
    pred = vnet.predict(
        case.x_test, n_samples=N_SAMPLES, generator=_gen(1), likelihood=case.likelihood
    )
    out["pred"].update(_pred(pred))
    return out


def ivon(case: Case, loader: Any) -> Values:
    """IVON: one pass of sampled steps over the loader (train mode), then opt.sampled_predict."""
    model = case.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = tb.optim.IVON(params, lr=0.05, ess=float(case.n), hess_init=1.0, seed=0)
    model.train()
    torch.manual_seed(TRAIN_SEED)  # the loader's shuffle: the order train_batches recorded
    for batch in loader:
        x, y = read_batch(batch)
        with opt.sampled_params(train=True):
            mean_loss(call_model(model, x), y, case.loss).backward()
        opt.step()
    model.eval()
    out: Values = {"fit": {"mean": _flat(params)}, "pred": {}, "checks": {}}
    pred = opt.sampled_predict(
        model, case.x_test, n_samples=N_SAMPLES, generator=_gen(1), likelihood=case.likelihood
    )
    out["pred"].update(_pred(pred))
    return out


@dataclass(frozen=True)
class PosteriorSpec:
    name: str
    fit: Callable[[Case, Any], Values]
    trains: bool = False  # a training loop: the reference is the order the loader yields


POSTERIORS = {
    spec.name: spec
    for spec in (
        PosteriorSpec("laplace-diag", laplace("diag")),
        PosteriorSpec("laplace-kron", laplace("kron")),
        PosteriorSpec("laplace-last_layer", laplace("last_layer")),
        PosteriorSpec("projected-gram", projected("gram")),
        PosteriorSpec("projected-nystrom", projected("nystrom")),
        PosteriorSpec("projected-block", projected("block")),
        PosteriorSpec("loss-projected", projected(loss_projected=True)),
        PosteriorSpec("variational", variational, trains=True),
        PosteriorSpec("ibvi", ibvi, trains=True),
        PosteriorSpec("ivon", ivon, trains=True),
    )
}


# ---------------------------------------------------------------------- the contract


@dataclass
class Outcome:
    values: Values | None = None
    error: BaseException | None = None
    where: str = ""


@dataclass
class CellRecord:
    cell: str
    status: str  # "equal", "documented-error", "FAIL"
    detail: str = ""


RECORDS: list[CellRecord] = []
_REFERENCES: dict[tuple, Outcome] = {}


def _location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/src/tacitbayes/" in f.filename.replace("\\", "/")]
    parts = []
    if ours:
        f = ours[-1]
        parts.append(
            f"src/tacitbayes/{f.filename.split('/src/tacitbayes/')[-1]}:{f.lineno} ({f.name})"
        )
    if frames and (not ours or frames[-1] is not ours[-1]):
        f = frames[-1]
        short = f.filename.split("site-packages/")[-1]
        parts.append(f"raised in {short}:{f.lineno} ({f.name})")
    return "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _run(fit: Callable[[], Values]) -> Outcome:
    try:
        return Outcome(values=fit())
    except Exception as exc:  # noqa: BLE001 - the contract judges every exception
        return Outcome(error=exc, where=_location(exc))


def _describe(outcome: Outcome) -> str:
    exc = outcome.error
    return f"{type(exc).__module__}.{type(exc).__name__}: {_first_line(exc)} [{outcome.where}]"


def _nonfinite(values: Values) -> list[str]:
    bad = []
    for group in ("fit", "pred"):
        for k, v in values[group].items():
            if not bool(torch.isfinite(v).all()):
                bad.append(f"{group}.{k}")
    return bad


def _rel(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    diff = float((a - b).norm())
    scale = float(b.norm())
    return diff / scale if scale > 0 else diff


def _compare(subject: Values, reference: Values) -> list[str]:
    problems = []
    for group, rtol in (("fit", FIT_RTOL), ("pred", PRED_RTOL)):
        for k, ref in reference[group].items():
            got = subject[group].get(k)
            if got is None:
                problems.append(f"{group}.{k} missing")
                continue
            rel = _rel(got, ref)
            if not rel <= rtol:
                shape = (
                    ""
                    if got.shape == ref.shape
                    else f" shapes {tuple(got.shape)} vs {tuple(ref.shape)}"
                )
                sample = ""
                if got.numel() == 1 and ref.numel() == 1:
                    sample = f" ({float(got):.10g} vs reference {float(ref):.10g})"
                problems.append(f"{group}.{k}: rel. diff {rel:.3g} > {rtol:g}{sample}{shape}")
    return problems


def _checks(values: Values, who: str) -> list[str]:
    return [f"{who} {k} violated: {text}" for k, (ok, text) in values["checks"].items() if not ok]


def reference_fit(posterior: str, case: Case, batches: list[Tensor]) -> Outcome:
    """The fit on the (x, y) tuple list of ``batches`` (row indices), cached per session."""
    key = (posterior, case.name, tuple(tuple(b.tolist()) for b in batches))
    if key not in _REFERENCES:
        reference_loader = tuple_loader(case, batches)
        _REFERENCES[key] = _run(lambda: POSTERIORS[posterior].fit(case, reference_loader))
    return _REFERENCES[key]


def run_cell(posterior: str, case: Case, spec: LoaderSpec, cell: str) -> None:
    """Fit ``posterior`` on the loader ``spec`` of ``case`` and hold it to the contract (pytest assert)."""
    post = POSTERIORS[posterior]
    if post.trains:
        batches = spec.train_batches(case, TRAIN_SEED)
    else:
        batches = spec.fit_batches(case)
    reference = reference_fit(posterior, case, batches)
    loader = spec.make(case)
    subject = _run(lambda: post.fit(case, loader))

    problems: list[str] = []
    status = "equal"
    if subject.error is not None:
        exc = subject.error
        documented = isinstance(exc, (InputError, DataError))
        one_line = "\n" not in str(exc).strip()
        if documented and one_line:
            status = "documented-error"
            RECORDS.append(CellRecord(cell, status, _describe(subject)))
            return
        why = (
            "not a tacitbayes InputError/DataError" if not documented else "message is not one line"
        )
        problems.append(f"raised {_describe(subject)} ({why})")
    else:
        values = subject.values
        bad = _nonfinite(values)
        if bad:
            problems.append(f"non-finite values: {', '.join(bad)}")
        problems += _checks(values, "loader fit:")
        if reference.error is not None:
            problems.append(
                f"the (x, y) tuple-list reference raised {_describe(reference)} but this loader did not"
            )
        else:
            bad_ref = _nonfinite(reference.values)
            if bad_ref:
                problems.append(f"non-finite values in the reference fit: {', '.join(bad_ref)}")
            problems += _checks(reference.values, "reference fit:")
            problems += _compare(values, reference.values)
    if problems:
        RECORDS.append(CellRecord(cell, "FAIL", "; ".join(problems)))
        raise AssertionError(f"{cell}: " + "; ".join(problems))
    RECORDS.append(CellRecord(cell, status))
