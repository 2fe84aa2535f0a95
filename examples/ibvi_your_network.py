"""Implicit-bias variational inference (IBVI) on a network of your own.

``tb.VariationalModel`` turns chosen ``nn.Linear``/``nn.Conv2d`` layers of any module into
Gaussian layers W = M + S·z (a mean and a low-rank factor, initialised at the prior) and is
trained on the expected loss alone: no KL term. The regulariser is the implicit bias of
SGD from the initialisation, which plays the prior. Here a small convolutional network,
written below, is trained twice from the same kind of initialisation, with the same
optimiser and loop: once deterministically (MAP) and once with a Gaussian last layer.

    python examples/ibvi_your_network.py            # about a minute on two cores
    python examples/ibvi_your_network.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import tacitbayes as tb
from tacitbayes.data import minibatches


class SmallConvNet(nn.Module):
    """Your network: any module whose chosen layers are nn.Linear / nn.Conv2d."""

    def __init__(self, n_classes: int = 10, channels: int = 16, width: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.hidden = nn.Linear(channels * 8 * 8, width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.features(x))))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-train", type=int, default=None, help="training images (default: all)")
    p.add_argument("--layers", default="head", help="comma-separated variational layers")
    p.add_argument("--rank", type=int, default=8, help="rank of each covariance factor")
    p.add_argument("--parametrization", default="sp", choices=["sp", "ntk", "mup"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny data and few epochs (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.n_train = 3, 200
    return args


def fit(optimizer: torch.optim.Optimizer, loss_of, data, epochs: int, seed: int) -> None:
    """One loop for both networks: SGD steps on minibatches of 128."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y in minibatches(data, 128, shuffle=True, generator=gen):
            optimizer.zero_grad()
            loss_of(x, y).backward()
            optimizer.step()


def main() -> None:
    args = parse_args()
    data = tb.data.load_dataset("digits", n_train=args.n_train, seed=args.seed)
    x, y = data.test.tensors
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]

    # MAP: the plain network, trained with SGD + momentum on the cross-entropy
    torch.manual_seed(args.seed)
    net = SmallConvNet()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    fit(
        opt,
        lambda xb, yb: nn.functional.cross_entropy(net(xb), yb),
        data.train,
        args.epochs,
        args.seed,
    )
    net.eval()
    with torch.no_grad():
        map_probs = torch.softmax(net(x), -1)

    # IBVI: the same architecture; init=True starts from the prior (a re-initialised copy,
    # your module is never modified); the loss is the expected loss, one sample per batch
    torch.manual_seed(args.seed)
    vnet = tb.VariationalModel(
        SmallConvNet(),
        init=True,
        layers=layers,
        rank=args.rank,
        parametrization=args.parametrization,
    )
    # per-layer learning rates of the parametrisation (the factors learn at ×1/rank)
    opt = vnet.optimizer(torch.optim.SGD, lr=args.lr, momentum=0.9)
    fit(opt, lambda xb, yb: vnet.expected_loss(xb, yb), data.train, args.epochs, args.seed)
    ibvi_probs = vnet.predict(x, n_samples=32)  # (1/K) Σ_k softmax(f(w_k, x))

    # the same loop could be `tb.variational.train_ibvi(vnet, data.train, IBVIConfig(...))`
    factor = vnet.factor(layers[-1])
    print(
        f"{len(data.train)} training images, {args.epochs} epochs; variational layers "
        f"{layers}, rank {args.rank}, {args.parametrization}; factor of {layers[-1]!r}: "
        f"{tuple(factor.shape)}"
    )
    print(f"{'network':<8} {'accuracy':>8} {'NLL':>7} {'ECE':>7}")
    for name, probs in (("MAP", map_probs), ("IBVI", ibvi_probs)):
        m = tb.metrics.evaluate(probs, y)
        print(f"{name:<8} {m['accuracy']:>8.4f} {m['nll']:>7.4f} {m['ece']:>7.4f}")

    # OOD detection with the predictive entropy: photo patches against the test digits
    with torch.no_grad():
        ood_map = torch.softmax(net(data.ood), -1)
    ood_ibvi = vnet.predict(data.ood, n_samples=32)
    print(
        "OOD AUROC (entropy, photo patches): "
        f"MAP {tb.metrics.ood_auroc(map_probs, ood_map, score='entropy'):.3f}, "
        f"IBVI {tb.metrics.ood_auroc(ibvi_probs, ood_ibvi, score='entropy'):.3f}"
    )


if __name__ == "__main__":
    main()
