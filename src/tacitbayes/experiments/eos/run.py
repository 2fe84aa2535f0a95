"""``tacitbayes eos``: sharpness of full-batch GD, variational GD and IVON at the edge of stability.

Every run starts from the same initialization and takes ``steps`` full-batch steps on the
MSE loss L = (1/N) Σ ½‖f(x_n) − onehot(y_n)‖² over the training subset:

* ``gd``: θ ← θ − ρ∇L(θ); its sharpness is expected to rise to 2/ρ and hover there;
* ``vgd σ=…, Ns=…`` for every σ in ``sigmas`` and N_s in ``n_samples``: variational GD
  (:class:`tacitbayes.optim.VariationalGD`) with the same ρ; docs/methods.md §3 predicts that its
  sharpness settles near h_crit(z) < 2/ρ, lower for larger σ and fewer samples;
* ``ivon``: IVON with ess = N (its preconditioned sharpness is also recorded).

A :class:`tacitbayes.dynamics.SharpnessTracker` records the top Hessian eigenvalue, L,
the accuracy and the gradient at the mean weights every ``record_every`` steps.  The VGD
threshold at a record is h_crit(ρ, z) with z = N_s c/σ² and c = (∇L·v₁)², the squared
gradient along the top eigenvector (the reference-code variant z = N_s‖∇L‖²/(Pσ²) is
reported beside it); a run's threshold is the median over its last ``tail`` fraction of
records, and its final sharpness the mean over the same records.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from tacitbayes.data import load_dataset
from tacitbayes.devices import check_device
from tacitbayes.dynamics import (
    SharpnessTracker,
    momentum_stability_threshold,
    vl_stability_threshold,
    z_from_gradient,
    z_reference,
)
from tacitbayes.errors import InputError
from tacitbayes.experiments.checks import (
    check_fraction,
    check_positive_ints,
    check_positive_numbers,
)
from tacitbayes.experiments.eos.report import write_outputs
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir
from tacitbayes.likelihoods import mean_loss
from tacitbayes.models import build_model
from tacitbayes.optim import IVON, VariationalGD

MODELS = ("mlp", "lenet", "resnet", "vit")
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"lr": 0.08, "steps": 1500, "sigmas": (0.01, 0.03), "n_train": None},
    "fashion-mnist": {"lr": 0.04, "steps": 1500, "sigmas": (0.003, 0.01), "n_train": 2000},
    "mnist": {"lr": 0.04, "steps": 1500, "sigmas": (0.003, 0.01), "n_train": 2000},
}
RESNET_WIDTH = 8  # channels of the first stage (GroupNorm with gcd(8, width) groups)
QUICK = {"steps": 60, "record_every": 20, "width": 32, "n_train": 300, "n_samples": (1, 2)}


@dataclass
class EosSettings:
    """Everything that defines one ``eos`` run (None: a per-dataset default, see DEFAULTS)."""

    dataset: str = "digits"
    model: str = "mlp"
    width: int | None = None
    depth: int | None = None
    activation: str = "tanh"
    n_train: int | None = None
    lr: float | None = None
    steps: int | None = None
    record_every: int | None = None
    sigmas: tuple[float, ...] | None = None
    n_samples: tuple[int, ...] = (1, 4)
    ivon: bool = True
    ivon_lr: float | None = None
    ivon_hess_init: float = 1.0
    ivon_beta1: float = 0.9
    ivon_beta2: float = 0.99999
    ivon_weight_decay: float = 1e-4
    tail: float = 0.4
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"  # where the model and data live: cpu, cuda, cuda:N or mps
    quick: bool = False
    data_dir: str | None = None
    out: str | None = None
    progress: bool = True

    def resolved(self) -> EosSettings:
        """A copy with every default filled in and every value checked (InputError otherwise)."""
        if self.dataset not in DEFAULTS:
            raise InputError(f"unknown dataset {self.dataset!r}; available: {', '.join(DEFAULTS)}")
        if self.model not in MODELS:
            raise InputError(f"eos supports the models {', '.join(MODELS)}, got {self.model!r}")
        base = dict(DEFAULTS[self.dataset])
        if self.quick:
            base.update(QUICK, sigmas=base["sigmas"][-1:])
        s = replace(self)
        s.lr = self.lr if self.lr is not None else base["lr"]
        s.steps = self.steps if self.steps is not None else base["steps"]
        s.sigmas = self.sigmas if self.sigmas is not None else base["sigmas"]
        s.n_train = self.n_train if self.n_train is not None else base["n_train"]
        default_width = RESNET_WIDTH if self.model == "resnet" else 128
        s.width = self.width if self.width is not None else base.get("width", default_width)
        if self.model == "resnet" and self.quick and self.width is None:
            s.width = 4
        s.n_samples = (
            base["n_samples"] if self.quick and self.n_samples == (1, 4) else self.n_samples
        )
        s.record_every = self.record_every or base.get("record_every") or max(s.steps // 60, 1)
        s.ivon_lr = self.ivon_lr if self.ivon_lr is not None else s.lr
        _check(s)
        check_device(s.device)
        return s


def _check(s: EosSettings) -> None:
    check_positive_numbers(s, "lr", "ivon_lr", "ivon_hess_init", "sigmas")
    if not s.n_samples or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s.n_samples
    ):
        raise InputError(f"n_samples must be integers ≥ 1, got {s.n_samples!r}")
    check_positive_ints(s, "steps")
    check_positive_ints(s, "threads", optional=True)
    check_fraction("tail", s.tail)
    if not 0 <= s.ivon_beta1 < 1 or not 0 <= s.ivon_beta2 <= 1 or s.ivon_weight_decay < 0:
        raise InputError("IVON needs beta1 in [0, 1), beta2 in [0, 1] and weight_decay ≥ 0")


def _model_options(s: EosSettings) -> dict[str, Any]:
    if s.model == "mlp":
        return {"width": s.width, "depth": s.depth or 2, "activation": s.activation}
    if s.model == "lenet":
        return {"activation": s.activation}
    if s.model == "resnet":  # GroupNorm; ``depth`` stages of one block, channels doubling
        channels = tuple(s.width * 2**i for i in range(s.depth or 2))
        groups = math.gcd(8, s.width)
        return {
            "channels": channels,
            "blocks": 1,
            "norm_groups": groups,
            "activation": s.activation,
        }
    return {"dim": s.width, "depth": s.depth or 2}


def run_specs(s: EosSettings) -> list[dict[str, Any]]:
    """The runs of an experiment: GD, VGD for each (σ, N_s), IVON."""
    specs: list[dict[str, Any]] = [{"name": "gd", "kind": "gd", "sigma": 0.0, "n_samples": 1}]
    for sigma in s.sigmas or ():
        for ns in s.n_samples:
            name = f"vgd σ={sigma:g} Ns={ns}"
            specs.append({"name": name, "kind": "vgd", "sigma": sigma, "n_samples": ns})
    if s.ivon:
        specs.append({"name": "ivon", "kind": "ivon", "sigma": None, "n_samples": 1})
    return specs


def _optimizer(spec: dict[str, Any], model: torch.nn.Module, s: EosSettings, n: int):
    if spec["kind"] == "gd":
        return torch.optim.SGD(model.parameters(), lr=s.lr)
    if spec["kind"] == "vgd":
        return VariationalGD(
            model.parameters(),
            lr=s.lr,
            sigma=spec["sigma"],
            n_samples=spec["n_samples"],
            seed=s.seed,
        )
    return IVON(
        model.parameters(),
        lr=s.ivon_lr,
        ess=float(n),
        hess_init=s.ivon_hess_init,
        beta1=s.ivon_beta1,
        beta2=s.ivon_beta2,
        weight_decay=s.ivon_weight_decay,
        seed=s.seed,
    )


def _annotate(rec: dict[str, Any], spec: dict[str, Any], s: EosSettings) -> dict[str, Any]:
    """Add the run's thresholds at this record: 2/ρ for GD, h_crit for VGD."""
    assert s.lr is not None
    out = {
        k: rec[k] for k in ("step", "loss", "accuracy", "sharpness", "grad_sq_norm", "grad_top_sq")
    }
    if spec["kind"] == "gd":
        out["threshold"] = 2.0 / s.lr
    elif spec["kind"] == "vgd":
        sigma, ns = spec["sigma"], spec["n_samples"]
        out["threshold"] = vl_stability_threshold(
            s.lr, z_from_gradient(sigma, ns, rec["grad_top_sq"])
        )
        out["threshold_reference"] = vl_stability_threshold(
            s.lr, z_reference(sigma, ns, rec["grad_sq_norm"], rec["n_params"])
        )
    else:
        out["threshold"] = None
        out["preconditioned_sharpness"] = rec["preconditioned_sharpness"]
    return out


def _train_run(spec, model, train, sharp_data, s: EosSettings) -> tuple[list[dict], bool, float]:
    """Full-batch training with sharpness records; returns (trajectory, diverged, seconds)."""
    x, y = train
    opt = _optimizer(spec, model, s, len(y))
    tracker = SharpnessTracker(
        model,
        "mse",
        sharp_data,
        every=s.record_every,
        optimizer=opt if spec["kind"] == "ivon" else None,
        tol=1e-3,
        seed=s.seed,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = mean_loss(model(x), y, "mse")
        loss.backward()
        return loss

    trajectory: list[dict[str, Any]] = []
    start = time.perf_counter()
    diverged = False
    bar = tqdm(range(s.steps + 1), desc=spec["name"], disable=not s.progress or None, leave=False)
    for step in bar:
        rec = tracker.maybe_record(step)
        if rec is not None:
            if not math.isfinite(rec["loss"]) or not math.isfinite(rec["sharpness"]):
                diverged = True
                break
            trajectory.append(_annotate(rec, spec, s))
            bar.set_postfix(sharpness=round(rec["sharpness"], 2), loss=round(rec["loss"], 4))
        if step == s.steps:
            break
        loss = float(torch.as_tensor(opt.step(closure)).detach())
        if not math.isfinite(loss) or loss > 1e6:
            diverged = True
            break
    return trajectory, diverged, time.perf_counter() - start


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def summarize(
    trajectory: list[dict[str, Any]], steps: int, tail: float, lr: float
) -> dict[str, Any]:
    """Final sharpness (mean over the last ``tail`` of the records), its ratios, the threshold medians."""
    late = [r for r in trajectory if r["step"] >= (1 - tail) * steps] or trajectory[-1:]
    if not late:
        return {"final_sharpness": None}
    sharp = statistics.fmean(r["sharpness"] for r in late)
    out: dict[str, Any] = {
        "final_sharpness": sharp,
        "ratio_to_gd_threshold": sharp * lr / 2.0,
        "final_loss": late[-1]["loss"],
        "train_accuracy": late[-1]["accuracy"],
        "tail_records": len(late),
    }
    threshold = _median([r.get("threshold") for r in late])
    if threshold is not None:
        out["threshold"] = threshold
        out["ratio_to_threshold"] = sharp / threshold
    if "threshold_reference" in late[0]:
        out["threshold_reference"] = _median([r["threshold_reference"] for r in late])
    if "preconditioned_sharpness" in late[0]:
        out["final_preconditioned_sharpness"] = statistics.fmean(
            r["preconditioned_sharpness"] for r in late
        )
    return out


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).double().mean())


def checks(runs: dict[str, dict[str, Any]], s: EosSettings) -> dict[str, Any]:
    """The expected physics: GD within 10% of 2/ρ; VGD lower, lower for larger σ and fewer samples."""
    out: dict[str, Any] = {}
    gd = runs.get("gd", {}).get("final_sharpness")
    if gd is not None:
        out["gd_within_10pct_of_2_over_lr"] = abs(gd * s.lr / 2.0 - 1.0) <= 0.10  # type: ignore[operator]
    vgd = {
        (r["sigma"], r["n_samples"]): r.get("final_sharpness")
        for r in runs.values()
        if r["kind"] == "vgd"
    }
    if gd is not None and vgd:
        out["vgd_below_gd"] = all(v is not None and v < gd for v in vgd.values())
    sig, nss = sorted({k[0] for k in vgd}), sorted({k[1] for k in vgd})
    pairs_sigma = [
        (vgd[(a, n)], vgd[(b, n)]) for n in nss for a, b in zip(sig, sig[1:], strict=False)
    ]
    pairs_ns = [
        (vgd[(sg, a)], vgd[(sg, b)]) for sg in sig for a, b in zip(nss, nss[1:], strict=False)
    ]
    if pairs_sigma:
        out["lower_for_larger_sigma"] = all(
            b is not None and a is not None and b < a for a, b in pairs_sigma
        )
    if pairs_ns:
        out["lower_for_fewer_samples"] = all(
            b is not None and a is not None and a < b for a, b in pairs_ns
        )
    ratios = [
        r["ratio_to_threshold"]
        for r in runs.values()
        if r["kind"] == "vgd" and "ratio_to_threshold" in r
    ]
    if ratios:
        out["vgd_sharpness_over_threshold"] = ratios
    return out


def run_eos(settings: EosSettings) -> dict[str, Any]:
    """Run GD, VGD (σ × N_s grid) and IVON from one initialization; write results, report, plots."""
    s = settings.resolved()
    with torch_threads(s.threads):
        return _run(s)


def _run(s: EosSettings) -> dict[str, Any]:
    device = check_device(s.device)
    out = check_output_dir(s.out or f"runs/eos-{time.strftime('%Y%m%d-%H%M%S')}")
    data = load_dataset(s.dataset, s.data_dir, n_train=s.n_train, seed=s.seed, ood=False)
    data = data.to(device)
    x, y = data.train.tensors
    torch.manual_seed(s.seed)
    init = build_model(s.model, data.input_shape, data.n_classes, **_model_options(s))
    runs: dict[str, dict[str, Any]] = {}
    for spec in run_specs(s):
        model = build_model(s.model, data.input_shape, data.n_classes, **_model_options(s))
        model.load_state_dict(init.state_dict())
        model.to(device).train()
        trajectory, diverged, seconds = _train_run(spec, model, (x, y), (x, y), s)
        row = {k: v for k, v in spec.items() if k != "name"}
        row.update(summarize(trajectory, s.steps, s.tail, s.lr))  # type: ignore[arg-type]
        row.update(diverged=diverged, seconds=seconds, trajectory=trajectory)
        row["test_accuracy"] = _accuracy(model, *data.test.tensors)
        if spec["kind"] == "ivon":
            alpha = s.ivon_lr
            row["preconditioned_threshold"] = momentum_stability_threshold(alpha, s.ivon_beta1)
        runs[spec["name"]] = row
    results = {
        "dataset": data.name,
        "model": s.model,
        "model_options": _model_options(s),
        "n_params": sum(p.numel() for p in init.parameters()),
        "device": str(device),
        "n_train": len(y),
        "n_test": len(data.test),
        "lr": s.lr,
        "gd_threshold": 2.0 / s.lr,  # type: ignore[operator]
        "threshold_method": "z = N_s (∇L·v₁)²/σ² per record, median over the tail",
        "runs": runs,
        "checks": checks(runs, s),
        "settings": asdict(s),
        "versions": versions(),
    }
    write_outputs(results, out)
    results["out"] = str(out)
    return results
