"""The implicit bias of initialisation in underdetermined linear systems.

Ay = b with A ∈ R^{n×d}, n < d, has infinitely many solutions; gradient descent on
½‖Ay − b‖² picks one, and which one depends on how y is parametrised and on the scale α
of the initialisation (``tb.dynamics.solve_underdetermined``):

1. depth 1 (y itself, from y₀) reaches y₀ + A⁺(b − Ay₀), the solution nearest to y₀;
2. a diagonal network y = u^{⊙2} − v^{⊙2} moves from the minimum-ℓ₂ solution (large α,
   the kernel regime) to the minimum-ℓ₁ one (small α, the rich regime), which recovers
   a sparse signal as basis pursuit does;
3. the same question for a network: the first layer of an MLP trained by GD moves almost
   entirely within the row space of its linearised problem, i.e. close to the
   minimum-distance change ΔW* = J⁺JΔW (``tacitbayes.dynamics.first_layer``).

    python examples/linear_systems.py            # about half a minute on two cores
    python examples/linear_systems.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import tacitbayes as tb
from tacitbayes.dynamics import first_layer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="equations")
    p.add_argument("--d", type=int, default=60, help="unknowns")
    p.add_argument("--k", type=int, default=4, help="non-zeros of the sparse signal")
    p.add_argument("--max-steps", type=int, default=50_000)
    p.add_argument("--width", type=int, default=256, help="MLP width for part 3")
    p.add_argument("--n-images", type=int, default=128, help="digits for part 3")
    p.add_argument("--gd-steps", type=int, default=200, help="GD steps for part 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small problems (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.n, args.d, args.k, args.max_steps = 10, 30, 2, 5_000
        args.width, args.n_images, args.gd_steps = 32, 32, 30
    return args


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    args = parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    n, d, k = args.n, args.d, args.k

    # 1. depth 1: the solution nearest to the initialisation
    A = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    y0 = torch.randn(d, generator=gen, dtype=torch.float64)
    run = tb.dynamics.solve_underdetermined(A, b, model="linear", y0=y0, tol=1e-12)
    closed = tb.dynamics.min_norm_solution(A, b, y0)
    print(
        f"1. depth 1, A {n}×{d}: ‖y_GD − (y₀ + A⁺(b − Ay₀))‖/‖…‖ = {rel(run.y, closed):.1e} "
        f"after {run.steps} steps"
    )

    # 2. a k-sparse signal; diagonal networks of depth 2 across the init scale α
    y_true = torch.zeros(d, dtype=torch.float64)
    y_true[torch.randperm(d, generator=gen)[:k]] = torch.randn(
        k, generator=gen, dtype=torch.float64
    )
    b = A @ y_true
    l1, l2 = tb.dynamics.min_l1_solution(A, b), tb.dynamics.min_norm_solution(A, b)
    print(f"\n2. {k}-sparse signal, diagonal network y = u⊙u − v⊙v; relative distances")
    print(f"{'α':>8} {'to min-ℓ₁':>10} {'to min-ℓ₂':>10} {'to signal':>10} {'steps':>7}")
    for alpha in (1e-4, 1e-2, 1.0, 10.0):
        r = tb.dynamics.solve_underdetermined(
            A,
            b,
            model="diagonal",
            depth=2,
            init_scale=alpha,
            max_steps=args.max_steps,
            tol=1e-8,
            seed=args.seed,
        )
        mark = "" if r.converged else " (not converged)"
        print(
            f"{alpha:>8.0e} {rel(r.y, l1):>10.1e} {rel(r.y, l2):>10.1e} "
            f"{rel(r.y, y_true):>10.1e} {r.steps:>7}{mark}"
        )
    print(
        f"basis pursuit (min-ℓ₁) to signal: {rel(l1, y_true):.1e}; "
        f"min-ℓ₂ to signal: {rel(l2, y_true):.2f}"
    )

    # 3. the first layer of an MLP trained by full-batch GD on the MSE loss
    data = tb.data.load_dataset("digits", n_train=args.n_images, seed=args.seed, ood=False)
    x, y = data.train.tensors
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, args.width), nn.Tanh(), nn.Linear(args.width, 10)
    )
    w_init = model[1].weight.detach().clone()
    G, X = first_layer.first_layer_factors(model, x)  # the linearised problem at init
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * 64 / args.width)
    target = nn.functional.one_hot(y, 10).to(x.dtype)
    for _ in range(args.gd_steps):
        opt.zero_grad()
        (0.5 * (model(x) - target).pow(2).sum(-1).mean()).backward()
        opt.step()
    delta = model[1].weight.detach() - w_init
    delta_star, rank = first_layer.min_distance_change(G, X, delta)
    s = first_layer.projection_summary(delta, delta_star, w_init)
    print(
        f"\n3. MLP 64-{args.width}-10, {len(y)} digits, {args.gd_steps} GD steps: "
        f"cos(ΔW, ΔW*) = {s['cosine']:.3f} (a random direction: "
        f"{math.sqrt(rank / delta.numel()):.3f}); ‖ΔW‖/‖W(0)‖ = {s['relative_change']:.3f}"
    )


if __name__ == "__main__":
    main()
