"""IVON as a drop-in optimiser, with the sharpness tracked during training.

IVON (``tb.optim.IVON``) replaces ``torch.optim.SGD``/``Adam`` in an ordinary loop: the
backward pass runs at a weight sample, inside ``with opt.sampled_params(train=True):``,
and the posterior N(μ, diag σ²) comes with the optimiser (``opt.sampled_predict``).

Both runs below start from the same initialisation and take full-batch steps with the
same step size ρ on the MSE loss ½‖f − onehot(y)‖² (the setting of the edge-of-stability
experiments). ``tb.dynamics.SharpnessTracker`` records the top Hessian eigenvalue λ_max
(Lanczos on Hessian-vector products) at the mean weights every few steps: under plain
GD it rises to 2/ρ and hovers there (the edge of stability); IVON settles at flatter
weights. For IVON the tracker also records the preconditioned sharpness
λ_max(D^{-1/2} H D^{-1/2}), D = diag(h + δ), whose stability limit is the heavy-ball one.

    python examples/ivon_optimizer.py            # about a minute on two cores
    python examples/ivon_optimizer.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tacitbayes as tb


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1000, help="training images (full batch)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.08, help="step size ρ of both runs")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=50, help="record the sharpness every k steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny data and few steps (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.n_train, args.width, args.steps, args.every = 200, 32, 40, 20
    return args


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½‖f − onehot(y)‖², averaged over the batch (the tracker's "mse")."""
    target = nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    return 0.5 * (out - target).pow(2).sum(-1).mean()


def run(name: str, model: nn.Module, train, test, args) -> dict:
    x, y = train
    n = len(y)
    if name == "GD":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    else:  # the drop-in: an optimiser that also holds a posterior
        opt = tb.optim.IVON(
            model.parameters(),
            lr=args.lr,
            ess=n,
            hess_init=1.0,
            beta1=0.9,
            beta2=0.99999,
            weight_decay=1e-4,
            seed=args.seed,
        )
    tracker = tb.dynamics.SharpnessTracker(
        model,
        "mse",
        (x, y),
        every=args.every,
        optimizer=opt if name == "IVON" else None,
        seed=args.seed,
    )
    start = time.perf_counter()
    for step in range(args.steps + 1):
        tracker.maybe_record(step)  # at the mean weights, outside sampled_params
        if step == args.steps:
            break
        opt.zero_grad()
        if name == "GD":
            mse(model(x), y).backward()
        else:
            with opt.sampled_params(train=True):  # weights = one sample θ = μ + σ ⊙ ε
                mse(model(x), y).backward()
        opt.step()
    seconds = time.perf_counter() - start
    xt, yt = test
    with torch.no_grad():
        if name == "GD":
            accuracy = float((model(xt).argmax(-1) == yt).double().mean())
        else:  # the Monte Carlo predictive of IVON's posterior
            probs = opt.sampled_predict(model, xt, n_samples=16)
            accuracy = float((probs.argmax(-1) == yt).double().mean())
    return {"tracker": tracker, "accuracy": accuracy, "seconds": seconds}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    data = tb.data.load_dataset("digits", n_train=args.n_train, seed=args.seed, ood=False)
    train, test = data.train.tensors, data.test.tensors

    def make() -> nn.Module:  # your network; both runs start from the same weights
        torch.manual_seed(args.seed)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, args.width),
            nn.Tanh(),
            nn.Linear(args.width, args.width),
            nn.Tanh(),
            nn.Linear(args.width, 10),
        )

    runs = {name: run(name, make(), train, test, args) for name in ("GD", "IVON")}

    edge = 2.0 / args.lr
    print(
        f"{len(train[1])} images, full batch, ρ = {args.lr} (2/ρ = {edge:.1f}), {args.steps} steps"
    )
    steps, gd = runs["GD"]["tracker"].series("sharpness")
    _, ivon = runs["IVON"]["tracker"].series("sharpness")
    _, pre = runs["IVON"]["tracker"].series("preconditioned_sharpness")
    print(f"{'step':>6} {'GD λ_max':>9} {'IVON λ_max':>11} {'IVON precond.':>14}")
    for s, a, b, c in zip(steps, gd, ivon, pre, strict=True):
        print(f"{s:>6} {a:>9.2f} {b:>11.2f} {c:>14.2f}")
    limit = tb.dynamics.momentum_stability_threshold(args.lr, 0.9)
    print(
        f"final sharpness ÷ 2/ρ: GD {gd[-1] / edge:.3f}, IVON {ivon[-1] / edge:.3f}; "
        f"IVON preconditioned {pre[-1]:.1f} (heavy-ball limit {limit:.0f})"
    )
    for name, r in runs.items():
        _, loss = r["tracker"].series("loss")
        print(
            f"{name:<5} train loss {loss[-1]:.4f}, test accuracy {r['accuracy']:.4f}, "
            f"{r['seconds']:.1f} s with sharpness records"
        )


if __name__ == "__main__":
    main()
