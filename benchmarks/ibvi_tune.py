"""Choose the IBVI optimizer for ``compare`` on the validation split only (never the test set).

Trains MAP exactly as ``compare`` does (Adam 1e-3, weight decay 1e-4, cosine) and IBVI
with each candidate optimizer / learning rate for the same epochs; the validation split
is halved: the temperature is fitted on the first half, metrics are read on the second
(in distribution and rotated by 30° and 60°). Prints one JSON object.

    .venv/bin/python benchmarks/ibvi_tune.py --dataset fashion-mnist --epochs 10
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tacitbayes import metrics
from tacitbayes.calibration import fit_logit_temperature
from tacitbayes.data import load_dataset, rotate
from tacitbayes.data.datasets import DEFAULT_ANGLES
from tacitbayes.errors import TrainingDivergedError
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map
from tacitbayes.variational import IBVIConfig, VariationalModel, fit_temperature, train_ibvi

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
CANDIDATES = {
    "sgd": [0.02, 0.05, 0.1, 0.2],
    "adam": [1e-3, 3e-3],
}


def _scores(predict, x: torch.Tensor, y: torch.Tensor, raw_to_x) -> dict:
    """Metrics in distribution, accuracy at 30° and 60°, and the mean over compare's angles."""
    out = metrics.evaluate(predict(x).double(), y)
    shifted = {a: metrics.accuracy(predict(raw_to_x(a)).double(), y) for a in DEFAULT_ANGLES}
    out["acc_rot30"], out["acc_rot60"] = shifted[30.0], shifted[60.0]
    out["shift_accuracy"] = sum(shifted.values()) / len(shifted)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument(
        "--only",
        default=None,
        help="optimizer:lr[:layers[:rank]] items, e.g. sgd:0.05,adam:0.001:last2:2 "
        "(layers: first_last (default), last2, last; rank: an integer or diag)",
    )
    parser.add_argument("--parametrization", default="sp")
    parser.add_argument("--skip-map", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="IBVI weight decay")
    parser.add_argument("--train-samples", type=int, default=1, help="IBVI samples per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, n_train=args.n_train, ood=False)
    vx, vy = data.val.tensors
    half = len(vx) // 2
    fit_x, fit_y, ev_x, ev_y = vx[:half], vy[:half], vx[half:], vy[half:]

    def rotated(angle: float) -> torch.Tensor:
        return data.normalize(rotate(ev_x * data.std + data.mean, angle))

    results: dict = {"dataset": args.dataset, "epochs": args.epochs, "runs": {}}
    if not args.skip_map:
        torch.manual_seed(args.seed)
        model = build_model(args.model, data.input_shape, data.n_classes)
        start = time.perf_counter()
        train_map(
            model, data.train, TrainConfig(epochs=args.epochs, seed=args.seed, progress=False)
        )
        model.eval()
        with torch.no_grad():
            row = _scores(lambda x: torch.softmax(model(x), -1), ev_x, ev_y, rotated)
        row["seconds"] = time.perf_counter() - start
        with torch.no_grad():
            temp, _ = fit_logit_temperature(model(fit_x), fit_y)
            row["nll_map_temperature"] = metrics.evaluate(
                torch.softmax(model(ev_x) / temp, -1).double(), ev_y
            )["nll"]
        row["map_temperature"] = temp
        results["runs"]["map"] = row
        print(json.dumps({"map": row}), flush=True)
    grid = [(o, lr, "first_last", 8) for o, lrs in CANDIDATES.items() for lr in lrs]
    if args.only:
        grid = []
        for item in args.only.split(","):
            fields = item.split(":") + ["first_last", "8"][len(item.split(":")) - 2 :]
            rank = fields[3]
            grid.append((fields[0], float(fields[1]), fields[2], rank))
    for opt, lr, layer_choice, rank in grid:
        torch.manual_seed(args.seed)
        net = build_model(args.model, data.input_shape, data.n_classes)
        names = [n for n, m in net.named_modules() if isinstance(m, LAYER_TYPES)]
        layers = {"first_last": None, "last2": names[-2:], "last": names[-1:]}[layer_choice]
        vnet = VariationalModel(
            net,
            layers=layers,
            rank=1 if rank == "diag" else int(rank),
            covariance="diagonal" if rank == "diag" else "lowrank",
            parametrization=args.parametrization,
            init=True,
        )
        key = f"{opt}:{lr:g}:{layer_choice}:{rank}"
        start = time.perf_counter()
        config = IBVIConfig(
            epochs=args.epochs,
            optimizer=opt,
            lr=lr,
            weight_decay=args.weight_decay,
            n_samples=args.train_samples,
            seed=args.seed,
            progress=False,
        )
        try:
            train_ibvi(vnet, data.train, config)
        except TrainingDivergedError:
            results["runs"][key] = {"diverged": True}
            print(json.dumps({key: "diverged"}), flush=True)
            continue
        seconds = time.perf_counter() - start
        gen = torch.Generator().manual_seed(1)
        temp = fit_temperature(vnet, fit_x, fit_y, 32, generator=gen)
        samples = [vnet.sample(gen) for _ in range(32)]
        row = _scores(lambda x, v=vnet, s=samples: v.predict(x, samples=s), ev_x, ev_y, rotated)
        row_t1 = _scores(
            lambda x, v=vnet, s=samples: v.predict(x, samples=s, temperature=1.0),
            ev_x,
            ev_y,
            rotated,
        )
        row.update({"temperature": temp, "seconds": seconds, "nll_T1": row_t1["nll"]})
        row["ece_T1"] = row_t1["ece"]
        results["runs"][key] = row
        print(json.dumps({key: row}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
