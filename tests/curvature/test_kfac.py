"""Tests for KFAC: factors against a naive per-example loop, exactness cases, damped inverse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.curvature import GGN, KFAC, ggn_diagonal
from tacitbayes.errors import InputError
from tacitbayes.functional import last_layer_names, layer_names
from tacitbayes.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


DT = torch.float64
N = 5
LOSSES = ["cross_entropy", "mse"]


def make_model(name: str) -> nn.Sequential:
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)
        )
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 2, 3, stride=1, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(72, 3)
        )
    return model.double()


def make_data(name: str, loss: str, n: int = N, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 6, 6) if name == "cnn" else (n, 5), generator=gen, dtype=DT)
    if loss == "cross_entropy":
        return x, torch.randint(0, 3, (n,), generator=gen)
    return x, torch.randn(n, 3, generator=gen, dtype=DT)


def ref_loss_hessian(f: Tensor, y: Tensor, loss: str) -> Tensor:
    """Λ = ∂²ℓ/∂f² for one example (f of shape (O,)) by autograd, independent of losses.py."""

    def ell(z: Tensor) -> Tensor:
        if loss == "cross_entropy":
            return F.cross_entropy(z[None], y[None])
        return 0.5 * ((z - y) ** 2).sum()

    return torch.autograd.functional.hessian(ell, f)


def ref_patches(conv: nn.Conv2d, h: Tensor) -> Tensor:
    """Patches (T, C·kh·kw) of one image (C, H, W) by explicit slicing, bias column 1 appended."""
    ph, pw = conv.padding
    h = F.pad(h, (pw, pw, ph, ph))
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    rows = []
    for i in range(0, h.shape[1] - kh + 1, sh):
        for j in range(0, h.shape[2] - kw + 1, sw):
            rows.append(torch.cat([h[:, i : i + kh, j : j + kw].reshape(-1), h.new_ones(1)]))
    return torch.stack(rows)


def ref_factors(model: nn.Sequential, x: Tensor, y: Tensor, loss: str, approx: str, red: str):
    """Naive loop over examples: A and G from per-location inputs and J_zᵀ Λ J_z by autograd."""
    idx = [i for i, m in enumerate(model) if isinstance(m, (nn.Linear, nn.Conv2d))]
    A = {i: 0.0 for i in idx}
    G = {i: 0.0 for i in idx}
    counts = dict.fromkeys(idx, 0)
    for n in range(x.shape[0]):
        h, zs = x[n : n + 1], {}
        for i, m in enumerate(model):
            if i in idx:
                if isinstance(m, nn.Conv2d):
                    a = ref_patches(m, h[0].detach())
                else:
                    a = torch.cat([h[0].detach(), h.new_ones(1)])[None]
                if approx == "reduce":
                    a = a.mean(0, keepdim=True)
                A[i] = A[i] + sum(torch.outer(r, r) for r in a)
                counts[i] += a.shape[0]
            h = m(h)
            zs[i] = h
        f = h[0]
        lam = ref_loss_hessian(f.detach(), y[n], loss)
        for i in idx:
            z = zs[i]
            jac = torch.stack(
                [torch.autograd.grad(f[o], z, retain_graph=True)[0][0] for o in range(3)]
            )
            jac = jac.reshape(3, jac.shape[1], -1) if z.ndim == 4 else jac[:, :, None]  # (O,out,T)
            locs = [jac.sum(-1)] if approx == "reduce" else list(jac.unbind(-1))
            G[i] = G[i] + sum(j.T @ lam @ j for j in locs)
    scale = 1.0 / x.shape[0] if red == "mean" else 1.0
    return {str(i): (A[i] / counts[i], G[i] * scale) for i in idx}


def close(a: Tensor, b: Tensor, tol: float = 1e-10) -> bool:
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


# --------------------------------------------------------------------------- factors


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(
    ("name", "approx", "red"),
    [("mlp", "expand", "sum"), ("cnn", "expand", "mean"), ("cnn", "reduce", "sum")],
)
def test_factors_match_naive_loop(name: str, approx: str, red: str, loss: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    K = KFAC(model, loss, (x, y), reduction=red, conv_approx=approx)
    ref = ref_factors(model, x, y, loss, approx, red)
    assert K.layers == list(ref) and K.n_data == N
    for layer, (A_ref, G_ref) in ref.items():
        A, G = K.factors[layer]
        assert close(A, A_ref) and close(G, G_ref), layer
        assert torch.equal(K.kronecker(layer).A, G) and torch.equal(K.kronecker(layer).B, A)


def block_mask(model: nn.Module) -> Tensor:
    """Block-diagonal mask in flat order: a module's weight and bias form one block."""
    owner = [n.rsplit(".", 1)[0] for n, p in model.named_parameters() for _ in range(p.numel())]
    return torch.tensor([[a == b for b in owner] for a in owner])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_single_example_equals_ggn_blocks(loss: str, red: str) -> None:
    """N = 1: Σ_c (aaᵀ) ⊗ (g_c g_cᵀ) = (aaᵀ) ⊗ Σ_c g_c g_cᵀ, so every Linear block is exact."""
    model = make_model("mlp")
    data = make_data("mlp", loss, n=1)
    K = KFAC(model, loss, data, reduction=red)
    ggn = GGN(model, loss, data, reduction=red).to_dense()
    dense = K.to_dense()
    mask = block_mask(model)
    assert close(dense, ggn * mask) and not dense[~mask].any()


class Tokens(nn.Module):
    """A Linear on tokens (N, T, D), then flattened (expand-exact) or mean-pooled (reduce-exact)."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.lin, self.pool = nn.Linear(4, 3), pool

    def forward(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        return z.mean(1) if self.pool else z.flatten(1)


CONVS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="circular", bias=False),
]


@pytest.mark.parametrize("kind", ["tokens", *range(len(CONVS))])
def test_expand_exact_when_loss_sums_over_locations(kind: str | int) -> None:
    """Linear layer + per-location mse: GGN = I ⊗ Σ_{n,t} ããᵀ, which fixes the 1/(N·T) in A."""
    torch.manual_seed(0)
    if kind == "tokens":
        model, x = Tokens(pool=False), torch.randn(4, 5, 4)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, **CONVS[kind]), nn.Flatten())
        x = torch.randn(4, 2, 6, 6)
    model, x = model.double(), x.double()
    y = torch.randn_like(model(x))
    for red in ("sum", "mean"):
        K = KFAC(model, "mse", (x, y), reduction=red)
        assert close(K.to_dense(), GGN(model, "mse", (x, y), reduction=red).to_dense())


@pytest.mark.parametrize("kind", ["tokens", "conv"])
def test_reduce_exact_for_one_example_with_mean_pooling(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "tokens":
        model, x = Tokens(pool=True), torch.randn(1, 5, 4)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        x = torch.randn(1, 2, 5, 5)
    model, x, y = model.double(), x.double(), torch.tensor([2])
    K = KFAC(model, "cross_entropy", (x, y), conv_approx="reduce")
    assert close(K.to_dense(), GGN(model, "cross_entropy", (x, y)).to_dense())


def test_sum_is_n_times_mean_and_batches_accumulate() -> None:
    model = make_model("cnn")
    x, y = make_data("cnn", "cross_entropy", n=6)
    mean = KFAC(model, "cross_entropy", (x, y))
    total = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    split = [(x[:2], y[:2]), (x[2:5], y[2:5]), (x[5:], y[5:])]
    batched = KFAC(model, "cross_entropy", split, reduction="sum")
    assert batched.n_data == 6
    for layer in mean.layers:
        (A, G), (As, Gs), (Ab, Gb) = (
            mean.factors[layer],
            total.factors[layer],
            batched.factors[layer],
        )
        assert close(A, As) and close(Gs, 6 * G) and close(Ab, As) and close(Gb, Gs)
    assert close(total.to_dense(), 6 * mean.to_dense())


def test_inplace_activation_after_layer() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    inplace = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    inplace.load_state_dict(plain.state_dict())
    data = make_data("mlp", "cross_entropy")
    assert close(
        KFAC(inplace, "cross_entropy", data).to_dense(),
        KFAC(plain, "cross_entropy", data).to_dense(),
    )


# --------------------------------------------------------------------------- partial selection


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_weight_only_and_bias_only_selection(approx: str) -> None:
    model = make_model("cnn")
    data = make_data("cnn", "mse")
    full = KFAC(model, "mse", data, conv_approx=approx)
    part = KFAC(model, "mse", data, param_names=["0.bias", "3.weight"], conv_approx=approx)
    assert part.layers == ["0", "3"] and part.shape == (2 + 3 * 72, 2 + 3 * 72)
    (A0, G0), (A3, G3) = part.factors["0"], part.factors["3"]
    assert close(A0, torch.ones(1, 1, dtype=DT)) and close(G0, full.factors["0"][1])
    assert close(A3, full.factors["3"][0][:72, :72]) and close(G3, full.factors["3"][1])
    keep = torch.cat([torch.arange(18, 20), torch.arange(20, 20 + 216)])
    assert close(part.to_dense(), full.to_dense()[keep][:, keep])


def test_last_layer_restriction() -> None:
    model = make_model("mlp")
    data = make_data("mlp", "cross_entropy")
    K = KFAC(model, "cross_entropy", data, param_names=last_layer_names(model))
    full = KFAC(model, "cross_entropy", data)
    assert K.layers == ["4"] and K.shape == (15, 15)
    assert close(K.to_dense(), full.to_dense()[-15:, -15:])


# --------------------------------------------------------------------------- operator API


@pytest.fixture(scope="module")
def kfac() -> KFAC:
    model = make_model("cnn")
    return KFAC(model, "cross_entropy", make_data("cnn", "cross_entropy"))


def test_products_diagonal_and_blocks(kfac: KFAC) -> None:
    dense = kfac.to_dense()
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(kfac.shape[0], generator=gen, dtype=DT)
    V = torch.randn(kfac.shape[0], 4, generator=gen, dtype=DT)
    assert close(kfac @ v, dense @ v) and close(kfac @ V, dense @ V)
    assert close(kfac.diagonal(), dense.diagonal()) and close(dense, dense.T, 0)
    for layer in kfac.layers:
        idx = kfac.flat_index(layer)
        assert close(dense[idx][:, idx], kfac.kronecker(layer).to_dense())
    assert not dense[~block_mask(kfac.fmodel.module)].any()
    # the [W, b] layout: first row of W̃ is weight row 0 then bias 0; flat order is weights, bias
    idx = kfac.flat_index("3")
    assert idx[:73].tolist() == [*range(20, 92), 236] and sorted(idx.tolist()) == list(
        range(20, 239)
    )


@pytest.mark.parametrize("per_layer", [False, True])
def test_solve_logdet_sample_against_dense(kfac: KFAC, per_layer: bool) -> None:
    delta = torch.tensor([0.3, 2.0], dtype=DT) if per_layer else 0.7
    damp = torch.zeros(kfac.shape[0], dtype=DT)
    for layer, d in zip(kfac.layers, [0.3, 2.0] if per_layer else [0.7, 0.7], strict=True):
        damp[kfac.flat_index(layer)] = d
    prec = kfac.to_dense() + torch.diag(damp)
    cov = torch.linalg.inv(prec)
    gen = torch.Generator().manual_seed(4)
    V = torch.randn(kfac.shape[0], 3, generator=gen, dtype=DT)
    assert close(kfac.solve(V, delta), cov @ V) and close(kfac.solve(V[:, 0], delta), cov @ V[:, 0])
    assert close(kfac.logdet(delta), torch.linalg.slogdet(prec)[1])
    T = kfac.sample_transform(torch.eye(kfac.shape[0], dtype=DT), delta)
    assert close(T @ T.T, cov)
    s1 = kfac.sample(3, delta, generator=torch.Generator().manual_seed(0))
    s2 = kfac.sample(3, delta, generator=torch.Generator().manual_seed(0))
    assert s1.shape == (3, kfac.shape[0]) and torch.equal(s1, s2)


def test_sample_empirical_covariance(kfac: KFAC) -> None:
    cov = torch.linalg.inv(kfac.to_dense() + 0.5 * torch.eye(kfac.shape[0], dtype=DT))
    s = kfac.sample(20000, 0.5, generator=torch.Generator().manual_seed(0))
    emp = s.T @ s / s.shape[0]
    assert float((emp - cov).abs().max()) < 0.05 * float(cov.diagonal().max())


def test_gradients_in_prior_precision(kfac: KFAC) -> None:
    """d/dδ log det(K + δI) = tr((K + δI)⁻¹); solve and sampling are differentiable in δ too."""
    delta = torch.tensor(0.8, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(kfac.logdet(delta), delta)
    cov = torch.linalg.inv(kfac.to_dense() + 0.8 * torch.eye(kfac.shape[0], dtype=DT))
    assert close(grad, cov.trace())
    per_layer = torch.tensor([0.5, 1.5], dtype=DT, requires_grad=True)
    v = torch.randn(kfac.shape[0], generator=torch.Generator().manual_seed(5), dtype=DT)
    assert torch.autograd.gradcheck(lambda d: v @ kfac.solve(v, d), (per_layer,))
    assert torch.autograd.gradcheck(lambda d: kfac.sample_transform(v, d), (per_layer,))


# --------------------------------------------------------------------------- library models


@pytest.mark.parametrize(("name", "opts"), [("mlp", {"width": 16}), ("lenet", {})])
def test_library_models(name: str, opts: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, **opts)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    K = KFAC(model, "cross_entropy", [(x[:7], y[:7]), (x[7:], y[7:])])
    expected = ["1", "3", "5"] if name == "mlp" else ["0", "3", "7", "9", "11"]
    assert K.layers == expected and K.n_data == 12
    for layer in K.layers:
        mod = dict(model.named_modules())[layer]
        A, G = K.factors[layer]
        assert A.shape == (mod.weight[0].numel() + 1,) * 2 and G.shape == (mod.weight.shape[0],) * 2
        for M in (A, G):
            assert torch.isfinite(M).all() and torch.equal(M, M.T)
            assert float(torch.linalg.eigvalsh(M).min()) >= -1e-5 * float(M.abs().max())
    assert K.shape[0] == sum(p.numel() for p in model.parameters())
    v = torch.randn(K.shape[0])
    assert torch.isfinite(K @ v).all() and torch.isfinite(K.solve(v, 1.0)).all()


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_norm_and_container_parameters_get_exact_diagonal_blocks(name: str) -> None:
    torch.manual_seed(0)
    small = {"resnet": {"channels": (4, 8), "blocks": 1, "norm_groups": 2}}
    small["vit"] = {"dim": 8, "depth": 1, "heads": 2}
    model = build_model(name, (1, 8, 8), 10, **small[name]).double()
    x, y = torch.randn(3, 1, 8, 8, dtype=DT), torch.randint(0, 10, (3,))
    K = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    assert K.shape[0] == sum(p.numel() for p in model.parameters())
    mods = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert K.layers == mods
    others = [b for b in K.blocks if b not in mods]
    kinds = {type(dict(model.named_modules())[b]).__name__ for b in others}
    assert kinds == ({"GroupNorm"} if name == "resnet" else {"LayerNorm", "ViT"})  # ViT: pos_embed
    linear = KFAC(model, "cross_entropy", (x, y), "sum", layer_names(model, mods))
    dense = K.to_dense()
    exact = GGN(model, "cross_entropy", (x, y), reduction="sum").to_dense()
    covered = torch.zeros(K.shape[0], dtype=torch.bool)
    for b in others:  # every diagonal block is the exact GGN diagonal there, zero off it
        idx = K._diag_index[b]
        block = dense[idx[:, None], idx[None, :]]
        torch.testing.assert_close(block, torch.diag(exact.diagonal()[idx]), rtol=1e-9, atol=1e-12)
        covered[idx] = True
    for la in mods:  # the Kronecker blocks are those of KFAC over the Linear/Conv2d layers
        idx = K.flat_index(la)
        torch.testing.assert_close(K.kronecker(la).to_dense(), linear.kronecker(la).to_dense())
        covered[idx] = True
    assert bool(covered.all())
    # damped solve, log-determinant and sampling agree with the dense block-diagonal matrix
    v = torch.randn(K.shape[0], dtype=DT)
    damped = dense + 0.7 * torch.eye(K.shape[0], dtype=DT)
    torch.testing.assert_close(K.solve(v, 0.7), torch.linalg.solve(damped, v))
    torch.testing.assert_close(K.logdet(0.7), torch.linalg.slogdet(damped)[1])
    T = K.sample_transform(torch.eye(K.shape[0], dtype=DT), 0.7)  # covariance T Tᵀ
    torch.testing.assert_close(T @ T.T, torch.linalg.inv(damped), rtol=1e-7, atol=1e-10)


def test_bad_input() -> None:
    model = make_model("mlp")
    data = make_data("mlp", "cross_entropy")
    with pytest.raises(InputError, match="reduction"):
        KFAC(model, "cross_entropy", data, reduction="avg")
    with pytest.raises(InputError, match="conv_approx"):
        KFAC(model, "cross_entropy", data, conv_approx="mean")
    with pytest.raises(InputError, match="no example"):
        KFAC(model, "cross_entropy", [])
    with pytest.raises(InputError, match="class targets"):
        KFAC(model, "cross_entropy", (data[0], data[1] + 10))
    K = KFAC(model, "cross_entropy", data)
    with pytest.raises(InputError, match="unknown KFAC layer"):
        K.kronecker("7")
    for bad in (0.0, -1.0, float("nan"), torch.ones(5), "a"):
        with pytest.raises(InputError, match="prior_precision"):
            K.logdet(bad)
    with pytest.raises(InputError, match="n_samples"):
        K.sample(0, 1.0)
    with pytest.raises(InputError):
        K.solve(torch.ones(3, dtype=DT), 1.0)


def test_unsupported_structures() -> None:
    lin = nn.Linear(5, 5).double()
    x = torch.randn(4, 5, dtype=DT)
    data = (x, torch.randint(0, 5, (4,)))
    with pytest.raises(InputError, match="more than once"):
        KFAC(nn.Sequential(lin, nn.Tanh(), lin), "cross_entropy", data)
    tied = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)).double()
    tied[1].weight = tied[0].weight
    with pytest.raises(InputError, match="shared"):
        KFAC(tied, "cross_entropy", data)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()).double()
    gdata = (torch.randn(2, 2, 4, 4, dtype=DT), torch.randn(2, 8, dtype=DT))
    K = KFAC(grouped, "mse", gdata)  # a grouped conv gets an exact diagonal block
    assert K.layers == [] and K.blocks == ["0"]
    exact = GGN(grouped, "mse", gdata).to_dense()
    torch.testing.assert_close(K.to_dense(), torch.diag(exact.diagonal()))

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, t: Tensor) -> Tensor:
            return self.mha(t, t, t)[0].mean(1)

    attn = Attn().double()
    tdata = (torch.randn(2, 3, 4, dtype=DT), torch.randint(0, 4, (2,)))
    K = KFAC(attn, "cross_entropy", tdata)  # MHA's projections: exact diagonal blocks
    assert K.layers == [] and K.blocks == ["mha", "mha.out_proj"]
    exact = GGN(attn, "cross_entropy", tdata).to_dense()
    torch.testing.assert_close(K.to_dense(), torch.diag(exact.diagonal()))

    class Direct(nn.Module):  # reads a Linear's weight as a tensor: the hook never fires
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, t: Tensor) -> Tensor:
            return F.linear(t, self.lin.weight, self.lin.bias)

    direct = Direct().double()
    ddata = (torch.randn(2, 4, dtype=DT), torch.randint(0, 4, (2,)))
    with pytest.raises(InputError, match="not called as modules"):
        KFAC(direct, "cross_entropy", ddata)
    with pytest.raises(InputError, match="not called as modules"):
        KFAC(direct, "cross_entropy", ddata, param_names=layer_names(direct, "lin"))


def test_from_factors_reproduces_the_fitted_operator() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    fitted = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    restored = KFAC.from_factors(model, "cross_entropy", fitted.factors, fitted.n_data, "sum")
    assert restored.n_data == 7
    torch.testing.assert_close(restored.to_dense(), fitted.to_dense(), rtol=0, atol=0)
    v = torch.randn(fitted.shape[0], dtype=torch.float64)
    torch.testing.assert_close(restored.solve(v, 0.3), fitted.solve(v, 0.3))


def test_from_factors_rejects_wrong_layers_and_shapes() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    fitted = KFAC(model, "cross_entropy", (torch.randn(3, 4), torch.tensor([0, 1, 2])))
    with pytest.raises(InputError, match="factors are given for layers"):
        KFAC.from_factors(model, "cross_entropy", {"0": fitted.factors["0"]}, 3)
    bad = dict(fitted.factors)
    bad["2"] = (torch.eye(5), torch.eye(4))
    with pytest.raises(InputError, match="must have shapes"):
        KFAC.from_factors(model, "cross_entropy", bad, 3)


def test_working_budget_chunks_give_the_same_curvature(monkeypatch: pytest.MonkeyPatch) -> None:
    import tacitbayes.budget

    torch.manual_seed(0)
    small = {"channels": (4, 8), "blocks": 1, "norm_groups": 2}
    model = build_model("resnet", (1, 8, 8), 10, **small).double()
    data = [(torch.randn(3, 1, 8, 8, dtype=DT), torch.randint(0, 10, (3,))) for _ in range(2)]
    K = KFAC(model, "cross_entropy", data, reduction="sum")
    d = ggn_diagonal(model, "cross_entropy", data, reduction="sum")
    monkeypatch.setattr(tacitbayes.budget, "WORKING_BYTES", 1)  # one column / example at a time
    K1 = KFAC(model, "cross_entropy", data, reduction="sum")
    torch.testing.assert_close(K1.to_dense(), K.to_dense(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ggn_diagonal(model, "cross_entropy", data, reduction="sum"), d)
    assert K1.loss_sum == pytest.approx(K.loss_sum) and K1.n_data == 6


@pytest.mark.parametrize("loss", LOSSES)
def test_monte_carlo_fisher_is_unbiased_and_seeded(loss: str) -> None:
    model = make_model("cnn")
    data = make_data("cnn", loss)
    exact_d = ggn_diagonal(model, loss, data, reduction="sum")
    mc_d = ggn_diagonal(model, loss, data, reduction="sum", mc_samples=20000, seed=3)
    assert float((mc_d - exact_d).norm() / exact_d.norm()) < 0.03
    again = ggn_diagonal(model, loss, data, reduction="sum", mc_samples=20000, seed=3)
    torch.testing.assert_close(again, mc_d, rtol=0, atol=0)
    exact = KFAC(model, loss, data, reduction="sum")
    mc = KFAC(model, loss, data, reduction="sum", mc_samples=20000)
    for name in exact.layers:
        (A, G), (A_mc, G_mc) = exact.factors[name], mc.factors[name]
        torch.testing.assert_close(A_mc, A)  # the input factor is exact
        assert float((G_mc - G).norm() / G.norm()) < 0.03
    with pytest.raises(InputError, match="mc_samples"):
        KFAC(model, loss, data, mc_samples=0)
