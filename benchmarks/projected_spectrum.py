"""What the projected posterior must resolve at scale: the spectra of K = J Jᵀ and of the GGN rows.

On the fashion-mnist MLP (784-512-512-10, trained as compare trains it) this prints, as
JSON, for random subsets of n training images:

* ``rank_for_residual``: the number k of top eigenpairs of K (logit rows) and of
  K_Λ = SᵀJJᵀS (GGN rows, ``rows="ggn"``) whose removal leaves a null-space residual
  ‖J𝒫ε‖/‖Jε‖ of r for a standard normal ε, i.e. √(tail energy beyond k / trace) = r;
  how it grows with n says whether a low-rank basis can do the projection;
* ``energy_examples``: how many examples of the whole training set carry 90%, 99%,
  99.9% of the GGN's trace Σ_n tr(Λ_n J_n J_nᵀ);
* ``ggn_trace_per_example``: tr(JᵀΛJ)/N, which with α sets the training-NLL change
  ≈ r² tr(JᵀΛJ)/(2Nα) that a residual r leaves (second order);
* ``product``: GFLOP/s of the autograd products J V and Jᵀ U (32 columns) against the
  same run's 4096² float32 matmul.

    .venv/bin/python benchmarks/projected_spectrum.py [--sizes 250,500,1000] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _timing import matmul_gflops
from torch.utils.data import TensorDataset

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.losses import get_loss
from tacitbayes.curvature.ntk import kernel_factors, ntk_blocks, ntk_gram
from tacitbayes.data import BatchLoader, load_dataset
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map

RESIDUALS = (0.3, 0.1, 0.03, 0.01)


def _ranks(eigenvalues: torch.Tensor) -> dict[str, int]:
    ev = eigenvalues.flip(0).clamp_min(0)
    tail = (1 - ev.cumsum(0) / ev.sum()).clamp_min(0).sqrt()
    return {str(r): int((tail > r).sum()) + 1 for r in RESIDUALS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--product-n", type=int, default=5000)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", ood=False)
    model = build_model("mlp", data.input_shape, data.n_classes)
    train_map(model, data.train, TrainConfig(epochs=args.epochs, progress=False))
    model.eval()
    x, y = data.train.tensors
    loss = get_loss("cross_entropy")
    out: dict = {"n_train": len(x), "n_params": sum(p.numel() for p in model.parameters())}
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    spectra = {}
    for n in (int(s) for s in args.sizes.split(",")):
        xs, ys = x[perm[:n]], y[perm[:n]]
        K = ntk_gram([kernel_factors(model, xs, ys)])
        KL = ntk_gram([kernel_factors(model, xs, ys, outputs="ggn")])
        spectra[str(n)] = {
            "logits": _ranks(torch.linalg.eigvalsh(K)),
            "ggn": _ranks(torch.linalg.eigvalsh(KL)),
        }
    out["rank_for_residual"] = spectra
    traces = []
    for i in range(0, len(x), 1000):
        f = kernel_factors(model, x[i : i + 1000], y[i : i + 1000], dtype=torch.float32)
        with torch.no_grad():
            lam = loss.hessian(model(x[i : i + 1000]).double(), y[i : i + 1000])
        traces.append((lam * ntk_blocks(f).double()).sum((1, 2)))
    energy = torch.cat(traces)
    cum = energy.sort(descending=True).values.cumsum(0) / energy.sum()
    out["energy_examples"] = {str(f): int((cum < f).sum()) + 1 for f in (0.9, 0.99, 0.999)}
    out["ggn_trace_per_example"] = float(energy.mean())
    n = args.product_n
    jac = DataJacobian(model, BatchLoader(TensorDataset(x[:n], y[:n]), 256))
    V = torch.randn(jac.shape[1], 32)
    start = time.perf_counter()
    U = jac.local_matmat(V)
    jv = time.perf_counter() - start
    start = time.perf_counter()
    jac.local_rmatmat(U)
    jtu = time.perf_counter() - start
    flops = 2 * n * jac.shape[1] * 32
    out["product"] = {
        "n": n,
        "columns": 32,
        "jv_gflops": flops / jv / 1e9,
        "jtu_gflops": flops / jtu / 1e9,
        "matmul_gflops": matmul_gflops(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
