"""``tacitbayes generative``: uncertainty of a generative model, the loss-projected posterior on a VAE.

1. A VAE (``vae_mlp`` or ``vae_conv``) is trained on the training split to its MAP
   weights by the mean negative ELBO (or loaded from ``checkpoint``; ``resume`` continues
   OUT/vae.pt).
2. Two posteriors are fitted on the whole training split, over all the VAE's parameters
   or the decoder's (``params``): the loss-projected posterior N(θ*, α⁻¹(I − G⁺G)), G the
   per-example negative-ELBO gradients, α by the evidence
   (:class:`~tacitbayes.posteriors.VAEProjectedPosterior`), and the diagonal Laplace
   baseline N(θ*, diag(h + δ)⁻¹), δ by the evidence
   (:class:`~tacitbayes.posteriors.VAEDiagonalLaplace`).
3. On at most ``n_eval`` seeded test and OOD images each: three uncertainty scores, the
   MAP's negative ELBO (``elbo``) and each posterior's summed reconstruction variance
   (``laplace_diag``, ``projected``) from ``n_samples`` samples of the linearised (or,
   with ``sampled``, the sampled-network) predictive; per score its OOD AUROC and its
   Spearman correlation with the reconstruction error (see
   :mod:`tacitbayes.experiments.generative.evaluate`).

Writes results.json, report.md, reconstructions.png and generated.png into ``out``
(:mod:`tacitbayes.experiments.generative.report`). The command line is wired in
:mod:`tacitbayes.experiments.generative.cli`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tacitbayes.checkpoints import load_checkpoint, model_weights
from tacitbayes.data import DATASETS, BatchLoader, DataBundle, load_dataset
from tacitbayes.devices import check_device
from tacitbayes.errors import InputError
from tacitbayes.experiments.checks import check_choice, check_positive_ints, check_positive_numbers
from tacitbayes.experiments.generative.evaluate import (
    eval_subset,
    finite_or_none,
    map_stats,
    method_row,
    posterior_stats,
    timed,
)
from tacitbayes.experiments.generative.report import write_outputs
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir
from tacitbayes.models import build_model
from tacitbayes.posteriors.generative import VAEDiagonalLaplace, VAEProjectedPosterior, check_vae
from tacitbayes.training import TrainConfig, train_map

__all__ = ["GenerativeSettings", "run_generative"]

MODELS = ("vae_mlp", "vae_conv")
PARAMS = ("all", "decoder")
SOLVERS = ("auto", "gram", "gram_float32", "nystrom", "krylov")
DEFAULT_EPOCHS = {"digits": 50, "fashion-mnist": 20, "mnist": 20}
DEFAULTS = {"n_eval": 2000, "n_samples": 16, "width": 512, "channels": 32}
QUICK = {"epochs": 3, "n_train": 300, "n_eval": 100, "n_samples": 4, "width": 64, "channels": 8}
CHECKPOINT = "vae.pt"
# the projection's default kernel budget, as a share of physical memory: all 55,000
# fashion-mnist images need 12 GiB (gram_float32), so a 24 GB machine runs them at defaults
MEMORY_FRACTION = 0.6
FIT_BATCH = 256  # training images per batch of the posterior fits
N_SHOWN, N_CODES, N_GENERATED = 8, 8, 4  # images per set in the grids; codes; samples per code


@dataclass
class GenerativeSettings:
    """Everything that defines one ``generative`` run (None: a per-dataset or ``quick`` default)."""

    dataset: str = "digits"
    model: str = "vae_mlp"
    params: str = "all"  # the posterior's parameters: all of the VAE's, or the decoder's
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    latent: int = 16
    width: int | None = None  # vae_mlp hidden width
    channels: int | None = None  # vae_conv channels
    n_train: int | None = None
    n_eval: int | None = None
    n_samples: int | None = None
    sampled: bool = False  # sampled-network predictive instead of the linearised one
    solver: str = "auto"
    memory_gb: float | None = None  # the projection's kernel budget (None: MEMORY_FRACTION)
    checkpoint: str | None = None
    resume: bool = False
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"  # where the model and data live: cpu, cuda, cuda:N or mps
    quick: bool = False
    data_dir: str | None = None
    ood_data_dir: str | None = None
    out: str | None = None
    progress: bool = True

    def resolved(self) -> GenerativeSettings:
        """A copy with every default filled in and every value checked (InputError otherwise)."""
        check_choice("dataset", self.dataset, DATASETS)
        if self.model not in MODELS:
            raise InputError(
                f"generative needs a VAE: --model {' or '.join(MODELS)}, got {self.model!r}"
            )
        check_choice("params", self.params, PARAMS)
        check_choice("solver", self.solver, SOLVERS)
        if self.width is not None and self.model != "vae_mlp":
            raise InputError("--width sets vae_mlp's hidden width; give vae_conv --channels")
        if self.channels is not None and self.model != "vae_conv":
            raise InputError("--channels sets vae_conv's channels; give vae_mlp --width")
        if self.resume and self.checkpoint is not None:
            raise InputError(
                "--resume continues training OUT/vae.pt and --checkpoint skips training; "
                "give one of them"
            )
        base = {**DEFAULTS, "epochs": DEFAULT_EPOCHS[self.dataset], "n_train": None}
        if self.quick:
            base.update(QUICK)
        s = replace(self)
        for key in ("epochs", "n_train", "n_eval", "n_samples"):
            if getattr(s, key) is None:
                setattr(s, key, base[key])
        if self.model == "vae_mlp" and s.width is None:
            s.width = base["width"]
        if self.model == "vae_conv" and s.channels is None:
            s.channels = base["channels"]
        check_positive_ints(s, "epochs", "batch_size", "latent", "n_eval", "n_samples")
        check_positive_ints(s, "width", "channels", "n_train", "threads", optional=True)
        if s.memory_gb is None:
            s.memory_gb = default_memory_gb()
        check_positive_numbers(s, "lr", "memory_gb")
        check_device(s.device)
        return s

    def model_options(self) -> dict[str, Any]:
        """The builder options of the VAE (besides the data's mean and std)."""
        size = {"width": self.width} if self.model == "vae_mlp" else {"channels": self.channels}
        return {"latent": self.latent, **size}

    def train_config(self) -> TrainConfig:
        """MAP training by the mean negative ELBO (z sampled in training mode)."""
        assert self.epochs is not None
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            loss="model_loss",
            seed=self.seed,
            progress=self.progress,
        )


def default_memory_gb() -> float:
    """MEMORY_FRACTION of this machine's physical memory in GiB (4 where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 4.0
    return round(MEMORY_FRACTION * total / 2**30, 1) if total > 0 else 4.0


def run_generative(settings: GenerativeSettings) -> dict[str, Any]:
    """Train (or load) a VAE, fit the projected and diagonal-Laplace posteriors, evaluate, write the outputs."""
    s = settings.resolved()
    with torch_threads(s.threads):
        return _run(s)


def _build(s: GenerativeSettings, data: DataBundle) -> nn.Module:
    """The VAE of ``s`` for ``data`` (seeded initialisation, or the weights of ``s.checkpoint``)."""
    torch.manual_seed(s.seed)
    vae = build_model(
        s.model, data.input_shape, data.n_classes, mean=data.mean, std=data.std,
        **s.model_options(),
    )  # fmt: skip
    check_vae(vae)
    if s.checkpoint is not None:
        weights = model_weights(load_checkpoint(s.checkpoint), vae, s.checkpoint)
        try:
            vae.load_state_dict(weights)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"checkpoint {s.checkpoint} does not fit this VAE: {exc}") from exc
    return vae


def _train(
    s: GenerativeSettings, vae: nn.Module, data: DataBundle, out: Path, device: torch.device
) -> tuple[list[dict[str, float]], float | None]:
    """Train ``vae`` in place (unless loaded from a checkpoint); (history, training seconds)."""
    if s.checkpoint is not None:
        return [], None
    start = time.perf_counter()
    trained = train_map(
        vae,
        data.train,
        s.train_config(),
        val_set=data.val if len(data.val) else None,
        checkpoint=out / CHECKPOINT,
        resume=s.resume,
        device=device,
    )
    return trained.history, time.perf_counter() - start


def _fit(s: GenerativeSettings, vae: nn.Module, data: DataBundle) -> dict[str, Any]:
    """Both posteriors fitted on the whole training split, with their fit seconds."""
    params = None if s.params == "all" else s.params
    loader = BatchLoader(data.train, FIT_BATCH)
    torch.manual_seed(s.seed)
    projected, projected_seconds = timed(
        lambda: VAEProjectedPosterior(
            vae,
            params,
            solver=s.solver,
            seed=s.seed,
            progress=s.progress,
            memory_budget=max(1, int(s.memory_gb * 2**30)),
        ).fit(loader, n_samples=s.n_samples)
    )
    laplace, laplace_seconds = timed(
        lambda: VAEDiagonalLaplace(vae, params, seed=s.seed).fit(loader)
    )
    return {
        "projected": (projected, projected_seconds),
        "laplace_diag": (laplace, laplace_seconds),
    }


def _evaluate(
    s: GenerativeSettings, vae: nn.Module, fits: dict[str, Any], test: torch.Tensor,
    ood: torch.Tensor, train_seconds: float | None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The results row of each method: the MAP's negative ELBO, then each posterior's variance."""
    linearized = not s.sampled
    (map_test, seconds), map_ood = timed(lambda: map_stats(vae, test)), map_stats(vae, ood)
    nll_bound = float(map_test["score"].mean())
    rows = {"elbo": method_row(map_test, map_ood, map_test["error"], nll_bound, seconds)}
    rows["elbo"].update(
        fit_seconds=train_seconds, score_definition="negative ELBO of the MAP VAE at z = μ"
    )
    for name in ("laplace_diag", "projected"):
        post, fit_seconds = fits[name]
        torch.manual_seed(s.seed)
        stats_test, seconds = timed(
            lambda p=post: posterior_stats(p, test, s.n_samples, linearized)
        )
        stats_ood = posterior_stats(post, ood, s.n_samples, linearized)
        row = method_row(stats_test, stats_ood, map_test["error"], nll_bound, seconds)
        row.update(
            fit_seconds=fit_seconds,
            prior_precision=post.prior_precision,
            score_definition="Σ_pixels Var_s of the posterior's reconstructions",
        )
        if name == "projected":
            row["solver_info"] = {
                k: finite_or_none(v) if isinstance(v, float) else v for k, v in post.info.items()
            }
            row["n_params"] = post.info["n_params"]
        else:
            assert post.diagonal is not None
            row["n_params"] = len(post.diagonal)
        rows[name] = row
    return rows


def _grid_images(
    s: GenerativeSettings, vae: Any, fits: dict[str, Any], test: torch.Tensor, ood: torch.Tensor
) -> dict[str, Any]:
    """The images of the two grids (CPU arrays (K, H, W)): inputs, reconstructions, std maps, generations."""
    linearized = not s.sampled
    shown = torch.cat([test[:N_SHOWN], ood[:N_SHOWN]])
    projected, laplace = fits["projected"][0], fits["laplace_diag"][0]
    mean, std = projected.reconstruction_stats(shown, s.n_samples, linearized)
    _, std_diag = laplace.reconstruction_stats(shown, s.n_samples, linearized)
    gen = torch.Generator().manual_seed(s.seed)
    z = torch.randn(N_CODES, vae.latent_dim, generator=gen).to(shown)
    samples = projected.generated_samples(z, N_GENERATED, linearized)

    def image(t: torch.Tensor) -> Any:
        return t.detach()[:, 0].cpu().numpy()  # channel 0 of single-channel images

    return {
        "n_test": min(N_SHOWN, len(test)),
        "inputs": image(vae.targets(shown)),
        "mean": image(mean),
        "std_projected": image(std),
        "std_laplace": image(std_diag),
        "generated_map": image(vae.generate(z)),
        "generated_samples": [image(x) for x in samples],
    }


def _run(s: GenerativeSettings) -> dict[str, Any]:
    device = check_device(s.device)
    out = check_output_dir(s.out or f"runs/generative-{time.strftime('%Y%m%d-%H%M%S')}")
    if s.resume and not (out / CHECKPOINT).is_file():
        raise InputError(
            f"cannot resume: checkpoint {out / CHECKPOINT} not found; run without --resume first"
        )
    s.train_config().validate()
    data = load_dataset(
        s.dataset, s.data_dir, seed=s.seed, n_train=s.n_train, ood_data_dir=s.ood_data_dir
    )
    vae = _build(s, data).to(device)
    data = data.to(device)
    history, train_seconds = _train(s, vae, data, out, device)
    vae.eval()
    test = eval_subset(data.test.tensors[0], s.n_eval, s.seed)  # type: ignore[arg-type]
    ood = eval_subset(data.ood, s.n_eval, s.seed + 1)  # type: ignore[operator]
    if not (len(test) and len(ood)):
        raise InputError(f"{data.name} has no test or no OOD images to evaluate")
    fits = _fit(s, vae, data)
    methods = _evaluate(s, vae, fits, test, ood, train_seconds)
    results = {
        "dataset": data.name,
        "ood_dataset": data.ood_name,
        "model": s.model,
        "model_options": s.model_options(),
        "n_params": sum(p.numel() for p in vae.parameters()),
        "params": s.params,
        "predictive": "sampled" if s.sampled else "linearized",
        "n_samples": s.n_samples,
        "device": str(device),
        "n_train": len(data.train),
        "n_test": len(test),
        "n_ood": len(ood),
        "nll_bound": methods["elbo"]["nll_bound"],
        "train_seconds": train_seconds,
        "train_history": history,
        "train_config": asdict(s.train_config()),
        "methods": methods,
        "settings": asdict(s),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    write_outputs(results, _grid_images(s, vae, fits, test, ood), out)
    results["out"] = str(out)
    return results
