"""Per-example losses ℓ(f, y) on network outputs f ∈ R^O and their output-Hessians Λ = ∂²ℓ/∂f².

Three losses are provided:

* ``"cross_entropy"``: ℓ = −log softmax(f)_y for an integer class ``y`` ∈ {0, …, O−1};
  Λ = diag(p) − p pᵀ with p = softmax(f).  Square-root factor S (Λ = S Sᵀ) has the
  O columns √p_c (e_c − p).
* ``"mse"``: ℓ = ½‖f − y‖² (no 1/O factor, summed over outputs); Λ = I, S = I.  The target
  has the shape of f.  An integer class vector y of shape (N,) with O > 1 is one-hot encoded;
  a real vector of shape (N,) with O = 1 is read as shape (N, 1).
* ``"binary_cross_entropy"``: ℓ = log(1 + e^f) − y f for a single logit f and y ∈ {0, 1}
  (Bernoulli likelihood); Λ = p(1 − p) with p = σ(f), S = √(p(1 − p)).

All functions act on a batch: ``f`` has shape (N, O) (``hessian_matvec`` broadcasts over
leading dimensions of ``u``) and return per-example values; reductions over examples are
the caller's job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = [
    "LOSSES",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "Loss",
    "MSELoss",
    "check_class_targets",
    "get_loss",
]


class Loss(ABC):
    """A twice-differentiable per-example loss ℓ(f, y) with a positive semi-definite output-Hessian."""

    name: str = ""

    @abstractmethod
    def prepare_target(self, y: Tensor, n: int, o: int, dtype: torch.dtype) -> Tensor:
        """Check ``y`` against outputs of shape (n, o) and convert it to the form ``value`` expects."""

    @abstractmethod
    def value(self, f: Tensor, y: Tensor) -> Tensor:
        """Per-example losses ℓ(f_n, y_n), shape (N,)."""

    @abstractmethod
    def output_gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """∂ℓ_n/∂f_n for every example, shape (N, O), computed without cancellation."""

    @abstractmethod
    def hessian_matvec(self, f: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """Λ_n u_n for every example; ``u`` has shape (..., N, O) and broadcasts against f."""

    @abstractmethod
    def hessian_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """A factor S_n of shape (O, C) per example with Λ_n = S_n S_nᵀ; returns (N, O, C)."""

    def hessian(self, f: Tensor, y: Tensor) -> Tensor:
        """The dense output-Hessians Λ_n, shape (N, O, O)."""
        s = self.hessian_sqrt(f, y)
        return s @ s.transpose(-1, -2)

    @abstractmethod
    def sampled_sqrt(self, f: Tensor, n_samples: int, generator: torch.Generator) -> Tensor:
        """Monte Carlo factor S̃_n (O, k) with E[S̃ S̃ᵀ] = Λ_n (the Fisher); returns (N, O, k)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_batch(y: Tensor, n: int) -> None:
    if not isinstance(y, Tensor):
        raise InputError(f"targets must be a Tensor, got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] != n:
        raise InputError(f"targets have shape {tuple(y.shape)} but the batch has {n} examples")


def check_class_targets(y: Tensor, n: int, o: int, loss: str) -> None:
    """Integer class targets y of shape (n,) with values in [0, o); InputError naming what differs."""
    if y.ndim != 1:
        raise InputError(
            f"{loss}: integer class targets must have shape ({n},), got {tuple(y.shape)}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= o):
        raise InputError(
            f"{loss}: class targets must lie in [0, {o - 1}] for {o} outputs, "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


class CrossEntropyLoss(Loss):
    """ℓ = −log softmax(f)_y = logsumexp(f) − f_y; Λ = diag(p) − p pᵀ."""

    name = "cross_entropy"

    def prepare_target(self, y: Tensor, n: int, o: int, dtype: torch.dtype) -> Tensor:
        """Require integer class labels of shape (n,) in [0, o)."""
        _check_batch(y, n)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise InputError(
                f"cross_entropy needs integer class labels, got dtype {y.dtype} (the second "
                "entry of each (x, y) batch is read as the targets)"
            )
        if o == 1:
            raise InputError(
                "cross_entropy needs one output per class (at least 2); a single-logit binary "
                "classifier uses loss 'binary_cross_entropy' (likelihood 'binary')"
            )
        check_class_targets(y, n, o, "cross_entropy")
        return y.long()

    def value(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ_n = logsumexp(f_n) − f_n[y_n] (torch's fused kernel, cheaper to differentiate twice)."""
        flat = torch.nn.functional.cross_entropy(
            f.reshape(-1, f.shape[-1]), y.reshape(-1), reduction="none"
        )
        return flat.reshape(f.shape[:-1])

    def output_gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """softmax(f) − e_y, with the y entry as −Σ_{c≠y} p_c (accurate when p_y ≈ 1)."""
        p = torch.softmax(f, dim=-1)
        true = torch.nn.functional.one_hot(y, f.shape[-1]).to(torch.bool)
        rest = torch.where(true, torch.zeros_like(p), p)
        return torch.where(true, -rest.sum(-1, keepdim=True), p)

    def hessian_matvec(self, f: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """Λu = p ⊙ u − p (pᵀu)."""
        p = torch.softmax(f, dim=-1)
        return p * u - p * (p * u).sum(-1, keepdim=True)

    def hessian_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """S[:, :, c] = √p_c (e_c − p), so that S Sᵀ = diag(p) − p pᵀ (uses Σ_c p_c = 1)."""
        p = torch.softmax(f, dim=-1)
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        # (eye - p[..., :, None])[..., o, c] = δ_oc − p_o ; scale column c by √p_c.
        return (eye - p.unsqueeze(-1)) * p.sqrt().unsqueeze(-2)

    def sampled_sqrt(self, f: Tensor, n_samples: int, generator: torch.Generator) -> Tensor:
        """Columns (p − e_ŷ)/√k for labels ŷ ~ Categorical(p): E[(p − e_ŷ)(p − e_ŷ)ᵀ] = diag p − p pᵀ."""
        p = torch.softmax(f, dim=-1)
        labels = torch.multinomial(p.detach().double(), n_samples, True, generator=generator)
        onehot = torch.nn.functional.one_hot(labels, f.shape[-1]).to(p.dtype)  # (N, k, O)
        return (p.unsqueeze(-1) - onehot.transpose(-1, -2)) / n_samples**0.5

    def hessian(self, f: Tensor, y: Tensor) -> Tensor:
        """Λ = diag(p) − p pᵀ."""
        p = torch.softmax(f, dim=-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


class MSELoss(Loss):
    """ℓ = ½‖f − y‖²; Λ = I."""

    name = "mse"

    def prepare_target(self, y: Tensor, n: int, o: int, dtype: torch.dtype) -> Tensor:
        """Accept y of shape (n, o); (n,) reals when o = 1; (n,) integer classes one-hot when o > 1."""
        _check_batch(y, n)
        if y.dtype == torch.bool or y.is_complex():
            raise InputError(f"mse needs real or integer targets, got dtype {y.dtype}")
        if y.ndim == 1 and not y.is_floating_point() and o > 1:
            check_class_targets(y, n, o, "mse")
            return torch.nn.functional.one_hot(y.long(), o).to(dtype)
        if y.ndim == 1 and o == 1:
            y = y.unsqueeze(-1)
        if tuple(y.shape) != (n, o):
            raise InputError(
                f"mse targets must have the output shape ({n}, {o}) (or be integer classes of "
                f"shape ({n},)), got {tuple(y.shape)}"
            )
        return y.to(dtype)

    def value(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ_n = ½ Σ_o (f_no − y_no)²."""
        return 0.5 * (f - y).square().sum(-1)

    def output_gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """f − y."""
        return f - y

    def hessian_matvec(self, f: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """Λu = u."""
        return u

    def hessian_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """S = I (one column per output)."""
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return eye.expand(*f.shape[:-1], -1, -1)

    def sampled_sqrt(self, f: Tensor, n_samples: int, generator: torch.Generator) -> Tensor:
        """Columns ε/√k with ε ~ N(0, I): E[ε εᵀ] = I."""
        shape = (*f.shape, n_samples)
        eps = torch.randn(shape, generator=generator, dtype=f.dtype, device=f.device)
        return eps / n_samples**0.5

    def hessian(self, f: Tensor, y: Tensor) -> Tensor:
        """Λ = I."""
        return self.hessian_sqrt(f, y).clone()


class BinaryCrossEntropyLoss(Loss):
    """ℓ = log(1 + e^f) − y f for one logit f and y ∈ {0, 1}; Λ = p(1 − p), p = σ(f)."""

    name = "binary_cross_entropy"

    def prepare_target(self, y: Tensor, n: int, o: int, dtype: torch.dtype) -> Tensor:
        """Require one output and targets 0/1 of shape (n,) or (n, 1); returns (n, 1) reals."""
        _check_batch(y, n)
        if o != 1:
            raise InputError(
                f"binary_cross_entropy needs a model with one output (a logit), got {o} outputs"
            )
        if y.is_complex():
            raise InputError(f"binary_cross_entropy needs 0/1 targets, got dtype {y.dtype}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.squeeze(1)
        if y.ndim != 1:
            raise InputError(
                f"binary_cross_entropy targets must have shape ({n},) or ({n}, 1), "
                f"got {tuple(y.shape)}"
            )
        y = y.to(dtype)
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise InputError("binary_cross_entropy targets must be 0 or 1")
        return y.unsqueeze(-1)

    def value(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ_n = softplus(f_n) − y_n f_n (torch's stable kernel)."""
        flat = torch.nn.functional.binary_cross_entropy_with_logits(f, y, reduction="none")
        return flat.sum(-1)

    def output_gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """σ(f) − y."""
        return torch.sigmoid(f) - y

    def hessian_matvec(self, f: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """Λu = p(1 − p) u."""
        p = torch.sigmoid(f)
        return p * (1 - p) * u

    def hessian_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """S = √(p(1 − p)), one column."""
        p = torch.sigmoid(f)
        return (p * (1 - p)).sqrt().unsqueeze(-1)

    def sampled_sqrt(self, f: Tensor, n_samples: int, generator: torch.Generator) -> Tensor:
        """Columns (p − ŷ)/√k for ŷ ~ Bernoulli(p): E[(p − ŷ)²] = p(1 − p)."""
        p = torch.sigmoid(f)
        draws = torch.rand((*p.shape, n_samples), generator=generator, dtype=torch.float64)
        labels = (draws.to(p.device) < p.detach().double().unsqueeze(-1)).to(p.dtype)
        return (p.unsqueeze(-1) - labels) / n_samples**0.5


LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropyLoss,
    "mse": MSELoss,
    "binary_cross_entropy": BinaryCrossEntropyLoss,
}


def get_loss(loss: str | Loss) -> Loss:
    """Return the :class:`Loss` named ``loss`` (a key of ``LOSSES``), or ``loss`` itself."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise InputError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
