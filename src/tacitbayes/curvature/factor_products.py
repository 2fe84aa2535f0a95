"""J V and Jᵀ U from per-layer Jacobian factors held in memory: a few large matrix products.

For a Linear layer z = W a + b with output gradients G_n = ∂f(x_n)/∂z_n (O × d_out),
the rows of example n restricted to (W, b) are G_n ⊗ (a_nᵀ, 1), so

    (J V)_n = G_n (V_W a_n + v_b),    (Jᵀ U)_W = Σ_n (G_nᵀ u_n) a_nᵀ,    (Jᵀ U)_b = Σ_n G_nᵀ u_n.

For k columns each is one (N × d_in)(d_in × k·d_out) matrix product and N small
(O × d_out)(d_out × k) ones, where the JVP and VJP of autograd re-run the network for
every pass. Parameters outside plain Linear layers (Conv2d, normalisation, sequence
Linear layers) enter through their explicit rows R_n (O × P_e): (J V)_n += R_n V_e.
The factors are those of :func:`tacitbayes.curvature.ntk.kernel_factors` (GGN rows mix
G by S_n, loss rows weight it by the loss gradient), computed once at θ*. Memory:
N·(Σ d_in + O·Σ d_out + O·P_e) numbers in the model's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tacitbayes.curvature.ntk import KernelFactors
from tacitbayes.errors import InputError

__all__ = ["FactorProducts"]


@dataclass(frozen=True)
class _Layer:
    """Where one Linear layer's weight and bias sit in the flat parameter vector."""

    weight: slice | None
    bias: slice | None
    d_out: int
    d_in: int


def _offsets(sizes: dict[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = slice(start, start + n)
        start += n
    return out


class FactorProducts:
    """J V and Jᵀ U over a list of batches' :class:`KernelFactors` (one layout for all)."""

    def __init__(
        self, factors: Sequence[KernelFactors], sizes: dict[str, int], store: object = None
    ) -> None:
        """``store``: what holds memory-mapped factors (kept alive as long as they are)."""
        self.store = store
        if not factors:
            raise InputError("no batch to build factor products from")
        self.factors = list(factors)
        self.n_params = sum(sizes.values())
        first = self.factors[0]
        if first.hadamard_names is None or first.explicit_names is None:
            raise InputError("the kernel factors carry no parameter names")
        where = _offsets(sizes)
        self.layers = []
        for (a, g, _), (w, b) in zip(first.hadamard, first.hadamard_names, strict=True):
            d_in = 0 if a is None else int(a.shape[-1])
            self.layers.append(
                _Layer(where[w] if w else None, where[b] if b else None, int(g.shape[-1]), d_in)
            )
        index = [torch.arange(where[n].start, where[n].stop) for n in first.explicit_names]
        device = first.hadamard[0][1].device if first.hadamard else first.explicit.device
        self.explicit_index = torch.cat(index).to(device) if index else None
        covered = sum(
            (0 if s.weight is None else s.d_out * s.d_in) + (0 if s.bias is None else s.d_out)
            for s in self.layers
        ) + (0 if self.explicit_index is None else len(self.explicit_index))
        if covered != self.n_params:
            raise InputError(
                f"the factors cover {covered} of the {self.n_params} parameters; "
                "they were built for other parameters"
            )

    def nbytes(self) -> int:
        """Memory the factors hold."""
        total = 0
        for f in self.factors:
            parts = [g for _, g, _ in f.hadamard] + [a for a, _, _ in f.hadamard if a is not None]
            if f.explicit is not None:
                parts.append(f.explicit)
            total += sum(t.numel() * t.element_size() for t in parts)
        return total

    def row_square_sum(self) -> float:
        """Σ over rows of ‖J_(n,o)‖² = tr(JᵀJ): Σ_l (‖a_n‖² + b) ‖g_no‖² + ‖R_no‖² over this rank's rows."""
        total = 0.0
        for f in self.factors:
            for a, g, bias in f.hadamard:
                aa = g.new_zeros(f.n) if a is None else a.pow(2).sum(-1)
                total += float(((aa + (1.0 if bias else 0.0)) * g.pow(2).sum((1, 2))).sum())
            if f.explicit is not None:
                total += float(f.explicit.pow(2).sum())
        return total

    def matmat(self, V: Tensor) -> list[Tensor]:
        """J_b V for every batch b: (P, k) -> [(N_b·O, k)], (J V)_n = Σ_l G_n (V_W a_n + v_b) + R_n V_e."""
        k = V.shape[1]
        weights = [
            None
            if s.weight is None
            else V[s.weight].reshape(s.d_out, s.d_in, k).permute(1, 2, 0).reshape(s.d_in, -1)
            for s in self.layers
        ]
        biases = [None if s.bias is None else V[s.bias] for s in self.layers]
        explicit = None if self.explicit_index is None else V[self.explicit_index]
        out = []
        for f in self.factors:
            n, o = f.n, f.n_outputs
            rows = V.new_zeros(n, o, k)
            flat = rows.view(n * o, k)
            for (a, g, _), s, w, b in zip(f.hadamard, self.layers, weights, biases, strict=True):
                if w is not None:  # G_n (V_W a_n): one large product, n small ones
                    rows.baddbmm_(g, (a @ w).view(n, k, s.d_out).transpose(1, 2))
                if b is not None:  # G_n v_b for every n at once
                    flat.addmm_(g.reshape(n * o, s.d_out), b)
            if explicit is not None and f.explicit is not None:
                rows += (f.explicit.reshape(n * o, -1) @ explicit).view(n, o, k)
            out.append(rows.reshape(n * o, k))
        return out

    def rmatmat(self, blocks: Sequence[Tensor]) -> Tensor:
        """Σ_b J_bᵀ U_b for the batches' row blocks U_b (N_b·O, k): (Jᵀ U)_W = Σ_n (G_nᵀ u_n) a_nᵀ."""
        if len(blocks) != len(self.factors):
            raise InputError(f"expected {len(self.factors)} row blocks, got {len(blocks)}")
        k = blocks[0].shape[1] if blocks else 0
        ref = blocks[0]
        weights = [
            None if s.weight is None else ref.new_zeros(s.d_in, s.d_out * k) for s in self.layers
        ]
        biases = [None if s.bias is None else ref.new_zeros(s.d_out, k) for s in self.layers]
        explicit = (
            None if self.explicit_index is None else ref.new_zeros(len(self.explicit_index), k)
        )
        for f, U in zip(self.factors, blocks, strict=True):
            n, o = f.n, f.n_outputs
            u = U.view(n, o, k)
            for (a, g, _), w, b in zip(f.hadamard, weights, biases, strict=True):
                if w is not None:
                    m = torch.bmm(g.transpose(1, 2), u)  # (n, d_out, k): G_nᵀ u_n
                    w.addmm_(a.T, m.reshape(n, -1))
                if b is not None:  # Σ_n G_nᵀ u_n
                    b.addmm_(g.reshape(n * o, -1).T, U)
            if explicit is not None and f.explicit is not None:
                explicit.addmm_(f.explicit.reshape(n * o, -1).T, U)
        out = ref.new_zeros(self.n_params, k)
        for s, w, b in zip(self.layers, weights, biases, strict=True):
            if w is not None:
                out[s.weight] = w.view(s.d_in, s.d_out, k).permute(1, 0, 2).reshape(-1, k)
            if b is not None:
                out[s.bias] = b
        if explicit is not None:
            out[self.explicit_index] = explicit
        return out
