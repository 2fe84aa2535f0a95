"""The Nyström preconditioner against dense inverses, with and without Jacobi scaling."""

from __future__ import annotations

import torch

from tacitbayes.posteriors.kernel_projection import NystromPreconditioner


def _kernel(n: int = 30, rank: int = 12) -> torch.Tensor:
    """A PSD kernel of full rank whose row norms span six orders of magnitude."""
    g = torch.Generator().manual_seed(0)
    F = torch.randn(n, rank, generator=g, dtype=torch.float64)
    K = F @ F.T + 1e-3 * torch.eye(n, dtype=torch.float64)
    d = torch.logspace(-3, 3, n, dtype=torch.float64)
    return d.sqrt()[:, None] * K * d.sqrt()[None, :]


def test_with_every_column_the_preconditioner_is_a_multiple_of_the_inverse() -> None:
    K = _kernel()  # condition number about 1e9
    s = K.diagonal().rsqrt()
    eye = torch.eye(len(K), dtype=torch.float64)

    def error(M: NystromPreconditioner) -> float:
        product = M(K)  # λ_ℓ K⁻¹ K on the whole space: λ_ℓ I
        return float((product / product[0, 0] - eye).abs().max())

    scaled = error(NystromPreconditioner(K, K, rel_cutoff=0.0, scale=s, core_scale=s))
    plain = error(NystromPreconditioner(K, K, rel_cutoff=0.0))
    assert scaled < 1e-3  # the jittered core of the unscaled kernel loses digits: 3e-2 here
    assert scaled < plain


def test_jacobi_scaling_conditions_a_kernel_of_uneven_rows_better() -> None:
    K = _kernel()
    landmarks = torch.arange(0, len(K), 3)  # a third of the columns
    s = K.diagonal().rsqrt()
    C, W = K[:, landmarks], K[landmarks][:, landmarks]
    scaled = NystromPreconditioner(C, W, scale=s, core_scale=s[landmarks])
    plain = NystromPreconditioner(C, W)

    def condition(M: NystromPreconditioner) -> float:
        values = torch.linalg.eigvals(M(K)).real  # M⁻¹K: similar to a symmetric PD matrix
        return float(values.max() / values.min())

    assert condition(scaled) < condition(plain) / 10
