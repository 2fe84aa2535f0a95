"""A learned Kronecker prior and its PAC-Bayes bound.

Source task: digits 0-4; target task: digits 5-9 (relabelled 0-4), one 5-output MLP.

1. Train the source network and fit a KFAC Laplace to it (prior precision by evidence).
2. Turn that posterior into a prior for the target task,
   p(w) = N(w_src, (β F_src + α δ I)⁻¹) per layer (``KroneckerPrior.from_laplace``).
   It never saw a target example (checked by SHA-1 fingerprints of the source inputs).
3. Train the target network under the prior (``train_with_prior``), form the posterior
   Q = N(w_t, τ (F_t + Λ_P)⁻¹) (``laplace_posterior``), and bound its 0-1 risk:
   KL(Q‖P) in closed form, the Monte Carlo training error with its own confidence term,
   McAllester, Catoni and kl-inverse bounds at δ = 0.05 (``pac_bayes_bound``).

The same for an isotropic prior N(0, λ⁻¹I) (a fresh network under weight decay), for
comparison. Each prior family is a grid of 5 precisions (λ, or αδ for the learned prior),
chosen on a proxy estimate and paid for by a union bound (ln 5 added to KL); the
temperature τ of Q is free, since the bound holds for every Q at once.

    python examples/learned_prior_bound.py            # about a minute on two cores
    python examples/learned_prior_bound.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.utils.data import TensorDataset

import tacitbayes as tb
from tacitbayes.data import BatchLoader

LAMBDAS = (1.0, 10.0, 100.0, 1e3, 1e4)  # isotropic precisions: λ, or αδ of the learned prior
TAUS = (1.0, 0.5, 0.2, 0.1)  # posterior temperatures: free (the bound holds for every Q)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--beta", type=float, default=1.0, help="scale of the source curvature")
    p.add_argument("--passes", type=int, default=10, help="Monte Carlo passes over the data")
    p.add_argument("--delta", type=float, default=0.05, help="the bound holds w.p. ≥ 1 − δ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="few epochs, small network (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.width, args.passes = 10, 32, 2
    return args


def task(split: TensorDataset, classes: list[int]) -> TensorDataset:
    """The examples of ``classes``, relabelled 0..k−1 in that order."""
    x, y = split.tensors
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[classes] = torch.arange(len(classes))
    return TensorDataset(x[keep], relabel[y[keep]])


def bound_for(model, make_prior, target, test, args) -> dict:
    """The tightest kl-inverse bound over the prior grid (λ in LAMBDAS) and τ in TAUS.

    Q = N(w_t, τ(F_t + Λ_P)⁻¹) around the trained target network. The grid point is chosen
    on a proxy estimate of the training error (its own random numbers); the bound then
    pays ln |LAMBDAS| for the prior's choice (a union bound) and uses fresh Monte Carlo
    draws with their own confidence term.
    """
    x, y = target.tensors
    kfac = tb.curvature.KFAC(model, "cross_entropy", BatchLoader(target, 1024), reduction="sum")
    cost = tb.priors.union_bound_cost(len(LAMBDAS))
    proxy_gen = torch.Generator().manual_seed(args.seed + 1)
    best = None
    for lam in LAMBDAS:
        prior = make_prior(lam)
        q0 = tb.priors.laplace_posterior(prior, kfac, model)
        for tau in TAUS:
            q = q0.tempered(tau)
            kl = max(float(tb.priors.kl_divergence(q, prior)), 0.0)
            proxy, _ = tb.priors.empirical_risk_local(model, q, x, y, 1, proxy_gen)
            score = tb.priors.kl_inverse_bound(proxy, kl + cost, len(y), args.delta / 2)
            if best is None or score < best["score"]:
                best = {"score": score, "lam": lam, "tau": tau, "q": q, "kl": kl, "prior": prior}
    q = best["q"]
    gen = torch.Generator().manual_seed(args.seed + 1000)  # fresh draws for the bound
    risk, draws = tb.priors.empirical_risk_local(model, q, x, y, args.passes, gen)
    row = tb.priors.pac_bayes_bound(
        risk, draws, best["kl"], len(y), args.delta, grid_size=len(LAMBDAS)
    )
    xt, yt = test.tensors
    row["test_error"] = tb.priors.empirical_risk_local(model, q, xt, yt, args.passes, gen)[0]
    row["lam"], row["tau"] = best["lam"], best["tau"]
    row["independent"] = tb.priors.check_prior_independent(best["prior"], x)
    return row


def main() -> None:
    args = parse_args()
    data = tb.data.load_dataset("digits", seed=args.seed, ood=False)
    source, target = task(data.train, [0, 1, 2, 3, 4]), task(data.train, [5, 6, 7, 8, 9])
    test = task(data.test, [5, 6, 7, 8, 9])
    wd = 1e-4

    def config(weight_decay: float) -> tb.TrainConfig:
        return tb.TrainConfig(
            epochs=args.epochs, lr=3e-3, weight_decay=weight_decay, seed=args.seed, progress=False
        )

    def network() -> torch.nn.Module:
        return tb.models.build_model("mlp", data.input_shape, 5, width=args.width, depth=2)

    # 1. source network and its KFAC Laplace (δ = N·wd to start, then the evidence)
    torch.manual_seed(args.seed)
    source_net = network()
    tb.train_map(source_net, source, config(wd))
    la = tb.Laplace(source_net, "classification", "kron", prior_precision=len(source) * wd)
    la.fit(BatchLoader(source, 1024))
    la.optimize_prior_precision()
    delta = float(la.prior_precision.mean())

    # 2. the learned prior N(w_src, (β F_src + α δ I)⁻¹), built on the source examples
    #    only; its isotropic precision αδ runs over the same grid as the isotropic prior's λ
    def learned(lam: float) -> tb.priors.KroneckerPrior:
        return tb.priors.KroneckerPrior.from_laplace(
            la, alpha=lam / delta, beta=args.beta, source_inputs=source.tensors[0]
        )

    # 3. target networks: from the source weights under the learned prior (α = β = 1, the
    #    source posterior); from a fresh initialisation under N(0, λ⁻¹I), λ = N_t·wd
    rows = {}
    model = copy.deepcopy(source_net)
    tb.priors.train_with_prior(model, target, learned(delta), config(0.0))
    rows["learned Kronecker"] = bound_for(model, learned, target, test, args)

    torch.manual_seed(args.seed + 1)
    model = network()

    def isotropic(lam: float) -> tb.priors.KroneckerPrior:
        return tb.priors.KroneckerPrior.isotropic(model, lam)  # zero mean: built on no data

    tb.priors.train_with_prior(model, target, isotropic(len(target) * wd), config(0.0))
    rows["isotropic N(0, λ⁻¹I)"] = bound_for(model, isotropic, target, test, args)

    print(
        f"target task: {len(target)} training images (digits 5-9), δ = {args.delta}; "
        f"source Laplace prior precision {delta:.3g}; grid of {len(LAMBDAS)} priors"
    )
    print(
        f"{'prior':<22} {'λ or αδ':>8} {'τ':>4} {'MC train err':>12} {'test err':>8} "
        f"{'KL':>8} {'McAllester':>10} {'Catoni':>7} {'kl-inverse':>10}  prior independent"
    )
    for name, r in rows.items():
        print(
            f"{name:<22} {r['lam']:>8g} {r['tau']:>4g} {r['mc_risk']:>12.4f} "
            f"{r['test_error']:>8.4f} {r['kl']:>8.1f} {r['mcallester']:>10.4f} "
            f"{r['catoni']:>7.4f} {r['kl_inverse']:>10.4f}  {r['independent']}"
        )


if __name__ == "__main__":
    main()
