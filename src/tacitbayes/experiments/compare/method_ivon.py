"""``compare`` method "ivon": train the same architecture from scratch with IVON, predict by MC.

The network is re-initialized (seeded like the MAP run) and trained with IVON for the MAP
run's epochs and batch size, one MC sample per step, ess = N (training-set size), a cosine
learning-rate schedule as the MAP run, and the hyper-parameters of ``DEFAULTS`` (chosen on
the validation split).  Predictions are the MC predictive (1/S) Σ_s softmax(f(θ_s, x)),
θ_s ~ N(μ, diag σ²), S = ``ctx.n_samples``.  ``info`` records the hyper-parameters, the
training time and its ratio to the MAP optimizer's time per step.

:func:`train_ivon` trains on ``ctx.data.train`` or on ``train_data`` (a DataLoader or any
re-iterable of batches used as given, or a Dataset batched and shuffled by (seed, epoch):
:func:`tacitbayes.batches.as_loader`), with the loss ``ctx.train_config.loss``
("cross_entropy", "mse" with real targets for regression, or "binary_cross_entropy" on
one logit; :mod:`tacitbayes.likelihoods`).

Under a process group (:mod:`tacitbayes.distributed`) :func:`train_ivon` runs IVON in sync
mode: every rank reads the same global batches, backpropagates the mean loss of its slice
of rows (:func:`tacitbayes.optim.sync.rank_rows`) at the shared weight sample and steps
with weight |B_r|/|B|, so W ranks train the one-process model and stay identical.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tacitbayes import distributed as D
from tacitbayes.batches import (
    as_loader,
    call_model,
    count_examples,
    iter_batches,
    minibatches,
    n_batches,
    n_examples,
    slice_inputs,
)
from tacitbayes.checkpoints import EpochCheckpoints
from tacitbayes.devices import model_dtype
from tacitbayes.errors import TrainingDivergedError
from tacitbayes.experiments.compare.registry import FitContext, Predictor, register_method
from tacitbayes.likelihoods import mean_loss
from tacitbayes.models import build_model
from tacitbayes.optim import IVON
from tacitbayes.optim.sync import rank_rows
from tacitbayes.training import epoch_batches, make_optimizer, scheduled_lr


@dataclass
class IvonSettings:
    """IVON hyper-parameters of the compare method (ess defaults to the training-set size)."""

    lr: float = 1.0
    hess_init: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99995
    weight_decay: float = 1e-4
    clip_radius: float | None = 1e-2
    rescale_lr: bool = True
    ess: float | None = None


# Settings that define IVON's optimisation path: a resumed run must use the same ones.
RESUME_SETTINGS = (
    *(name for name in IvonSettings.__dataclass_fields__ if name != "ess"),
    "ess",
    "batch_size",
    "loss",
    "schedule",
    "seed",
)

# Chosen on the validation split (784/64-512-512-10 MLP, compare's default epochs and batch
# size): digits (1,294 images) needs h₀ = 1 (σ₀ = 1/√(N h₀) ≈ 0.028; h₀ = 0.1 underfits);
# fashion-mnist (54,000) h₀ = 0.1 with δ = 5e-4 (lr 0.5/2, h₀ 0.03–0.3, δ 1e-4/1e-3, no clip:
# worse validation NLL).
DEFAULTS: dict[str, IvonSettings] = {
    "digits": IvonSettings(hess_init=1.0),
    "fashion-mnist": IvonSettings(hess_init=0.1, weight_decay=5e-4),
    "mnist": IvonSettings(hess_init=0.1, weight_decay=5e-4),
}


class IvonPredictor:
    """MC predictive of an IVON posterior: (1/S) Σ_s softmax(f(μ + σ ⊙ ε_s, x))."""

    def __init__(
        self, model: nn.Module, optimizer: IVON, n_samples: int, seed: int, info: dict
    ) -> None:
        self.model, self.optimizer, self.n_samples = model, optimizer, n_samples
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.info = info

    def predict_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Logits f(μ + σ ⊙ ε_s, x) for ``n_samples`` fresh weight samples: (S, len(x), C)."""
        was_training = self.model.training
        self.model.eval()
        outs = []
        try:
            for _ in range(self.n_samples):
                with (
                    torch.no_grad(),
                    self.optimizer.sampled_params(train=False, generator=self.generator),
                ):
                    outs.append(self.model(x))
        finally:
            self.model.train(was_training)
        return torch.stack(outs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, averaged over ``n_samples`` weight samples."""
        return self.optimizer.sampled_predict(
            self.model, x, self.n_samples, generator=self.generator
        )


def _map_step_seconds(ctx: FitContext, data, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the MAP optimizer on a fresh copy of the network."""
    torch.manual_seed(ctx.seed)
    model = build_model(
        ctx.model_name, ctx.data.input_shape, ctx.data.n_classes, **ctx.model_options
    ).to(ctx.device)
    opt = make_optimizer(model, ctx.train_config)
    batches = list(minibatches(data, ctx.train_config.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(ctx.seed)))  # fmt: skip
    batches = (batches * (1 + steps // len(batches)))[: steps + 5]
    for x, y in batches[:5]:  # warm-up, not timed
        opt.zero_grad(set_to_none=True)
        mean_loss(model(x), y, ctx.train_config.loss).backward()
        opt.step()
    batches = batches[5:]
    on_cuda = torch.device(ctx.device).type == "cuda"  # time finished work, not queued kernels
    if on_cuda:
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        mean_loss(model(x), y, ctx.train_config.loss).backward()
        opt.step()
    if on_cuda:
        torch.cuda.synchronize()
    n = max(len(batches), 1)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def train_ivon(
    ctx: FitContext,
    settings: IvonSettings | None = None,
    train_data: Any = None,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> tuple[nn.Module, IVON, dict]:
    """Train a fresh copy of the architecture with IVON; return (model at the mean, optimizer, info).

    ``train_data`` (default ``ctx.data.train``) follows the data rule of
    :func:`tacitbayes.batches.as_loader`; ess defaults to its number of examples N.
    With ``checkpoint`` the mean, the optimizer's state (its noise generator included)
    and the history are saved atomically after every epoch; with ``resume`` training
    continues from that file and ends with the uninterrupted run's weights, bit for bit.
    """
    settings = settings or DEFAULTS.get(ctx.data.name, IvonSettings())
    config = ctx.train_config
    train = ctx.data.train if train_data is None else train_data
    loader = as_loader(train, config.batch_size, shuffle=True, seed=ctx.seed, what="train_data")
    n = count_examples(loader) if not settings.ess else 0
    torch.manual_seed(ctx.seed)
    model = build_model(
        ctx.model_name, ctx.data.input_shape, ctx.data.n_classes, **ctx.model_options
    ).to(ctx.device)
    opt = IVON(
        model.parameters(),
        lr=settings.lr,
        ess=float(settings.ess or n),
        hess_init=settings.hess_init,
        beta1=settings.beta1,
        beta2=settings.beta2,
        weight_decay=settings.weight_decay,
        clip_radius=settings.clip_radius,
        rescale_lr=settings.rescale_lr,
        seed=ctx.seed,
        sync=D.is_distributed(),
        fused=torch.device(ctx.device).type == "cpu",  # the compiled update its figures timed
    )
    ess = float(settings.ess or n)
    saves = EpochCheckpoints(
        checkpoint,
        "ivon",
        asdict(settings) | {"ess": ess, "epochs": config.epochs, "batch_size": config.batch_size,
                            "loss": config.loss, "schedule": config.schedule, "seed": ctx.seed},
        RESUME_SETTINGS,
    )  # fmt: skip
    first, history = saves.restore(model, opt) if resume else (0, [])
    total = n_batches(loader) * config.epochs
    dtype = model_dtype(model)
    step = first * n_batches(loader)
    start, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(
        range(first, config.epochs),
        desc="train IVON",
        disable=not (ctx.progress and D.is_main()) or None,
        leave=False,
    )
    for epoch in bar:
        model.train()
        batches = epoch_batches(loader, config.batch_size, ctx.seed, epoch)
        loss_sum, count = 0.0, 0
        for x, y in iter_batches(batches, ctx.device, dtype):
            lr = scheduled_lr(settings.lr, step, total, config.schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            rows = len(y)
            x, y, weight = _rank_slice(x, y)
            with opt.sampled_params(train=True):
                loss = mean_loss(call_model(model, x), y, config.loss)
                loss.backward()
            value = float(loss.detach())
            if weight is not None:  # the global loss Σ_r w_r ℓ_r, so all ranks stop together
                value = D.all_reduce_float(value * weight)
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"IVON: non-finite training loss at epoch {epoch + 1} (try a smaller lr)"
                )
            opt.step(weight=weight)
            step += 1
            loss_sum += value * rows
            count += rows
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)})
        saves.save(model, opt, epoch + 1, history)
    steps_run = step - first * n_batches(loader)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.eval()
    info: dict[str, Any] = {
        "ivon": {k: v for k, v in asdict(settings).items()} | {"ess": ess},
        "ivon_epochs": config.epochs,
        "train_loss": history[-1]["train_loss"],
        "train_seconds": seconds,
        "ivon_seconds_per_step": seconds / max(steps_run, 1),
        "ivon_cpu_seconds_per_step": cpu / max(steps_run, 1),
    }
    return model, opt, info


def _rank_slice(x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor, float | None]:
    """This rank's rows of a global batch and its weight |B_r|/|B| (None without a process group).

    A rank whose slice is empty evaluates the first row with weight 0, so that it runs
    the same sampled passes as the others.
    """
    if not D.is_distributed():
        return x, y, None
    n = n_examples(x)
    start, stop = rank_rows(n)
    weight = (stop - start) / n
    if start == stop:
        start, stop = 0, 1
    return slice_inputs(x, start, stop), y[start:stop], weight


@register_method("ivon")
def fit_ivon(ctx: FitContext) -> Predictor:
    """IVON trained from scratch (same architecture, epochs, batch size); MC predictive."""
    checkpoint, resume = ctx.training_checkpoint("ivon")
    model, opt, info = train_ivon(ctx, checkpoint=checkpoint, resume=resume)
    # Same-process timing of the MAP optimizer (100 steps on a fresh copy): CPU time is the
    # steadier ratio on a shared machine; wall time is recorded beside it.
    map_wall, map_cpu = _map_step_seconds(ctx, ctx.data.train, steps=100)
    info["map_seconds_per_step_measured"] = map_wall
    info["time_ratio_vs_map"] = info["ivon_cpu_seconds_per_step"] / map_cpu
    info["time_ratio_vs_map_wall"] = info["ivon_seconds_per_step"] / map_wall
    info["mc_samples_predict"] = ctx.n_samples
    return IvonPredictor(model, opt, ctx.n_samples, ctx.seed, info)
