"""Tests for tacitbayes.models: shapes, gradients, option checks and torch.func use."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from tacitbayes.errors import InputError
from tacitbayes.models import MLP, LeNet, ResNet, ViT, available_models, build_model

NAMES = ["mlp", "lenet", "resnet", "vit"]
SHAPES = [(1, 8, 8), (1, 28, 28)]
CASES = [(n, s) for n in NAMES for s in SHAPES]
IDS = [f"{n}-{s[1]}x{s[2]}" for n, s in CASES]


def _build(name: str, shape: tuple[int, int, int], n_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, shape, n_classes)


def _batch(shape: tuple[int, int, int], n: int = 4, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=gen, dtype=dtype)


def test_available_models() -> None:
    assert available_models() == sorted([*NAMES, "vae_conv", "vae_mlp"])


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_forward_shape_finite_and_gradient_reaches_every_parameter(name, shape) -> None:
    model = _build(name, shape, n_classes=7)
    x = _batch(shape, n=5)
    out = model(x)
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_unknown_name_lists_available() -> None:
    with pytest.raises(
        InputError,
        match="unknown model 'foo'; available: lenet, mlp, resnet, vae_conv, vae_mlp, vit",
    ):
        build_model("foo", (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("name", "shape", "options", "pattern"),
    [
        ("mlp", (1, 8, 8), {"width": 0}, "width"),
        ("mlp", (1, 8, 8), {"width": 1.5}, "width"),
        ("mlp", (1, 8, 8), {"width": True}, "width"),
        ("mlp", (1, 8, 8), {"depth": 0}, "depth"),
        ("mlp", (1, 8, 8), {"activation": "swish"}, "unknown activation 'swish'"),
        ("mlp", (1, 8, 8), {"foo": 1}, "unknown option 'foo' for model 'mlp'; accepted"),
        ("lenet", (1, 8, 8), {"activation": "nope"}, "activation"),
        ("lenet", (1, 2, 2), {}, "at least 4x4"),
        ("resnet", (1, 8, 8), {"blocks": 0}, "blocks"),
        ("resnet", (1, 8, 8), {"norm_groups": 5}, "norm_groups"),
        ("resnet", (1, 8, 8), {"channels": ()}, "channels"),
        ("vit", (1, 28, 28), {"patch_size": 3}, "patch_size=3 must divide"),
        ("vit", (1, 8, 8), {"heads": 3}, "heads=3 must divide dim=64"),
        ("vit", (1, 8, 8), {"mlp_ratio": 0.0}, "mlp_ratio"),
        ("vit", (1, 8, 8), {"depth": 0}, "depth"),
        ("mlp", (8, 8), {}, "input_shape"),
        ("mlp", (1, 0, 8), {}, "input_shape"),
    ],
)
def test_bad_options_raise_input_error(name, shape, options, pattern) -> None:
    with pytest.raises(InputError, match=pattern):
        build_model(name, shape, 10, **options)


@pytest.mark.parametrize("name", NAMES)
def test_bad_n_classes(name) -> None:
    with pytest.raises(InputError, match="n_classes"):
        build_model(name, (1, 8, 8), 0)


def test_options_are_passed_through() -> None:
    mlp = build_model("MLP", (1, 8, 8), 3, width=16, depth=3, activation="tanh")
    assert isinstance(mlp, MLP)
    assert [n for n, _ in mlp.named_parameters()] == [
        f"{i}.{k}" for i in (1, 3, 5, 7) for k in ("weight", "bias")
    ]
    assert isinstance(mlp[2], nn.Tanh)
    vit = build_model("vit", (1, 28, 28), 3, patch_size=7, dim=8, heads=2)
    assert isinstance(vit, ViT) and vit.pos_embed.shape == (1, 16, 8)
    assert isinstance(build_model("resnet", (1, 8, 8), 3, channels=(8, 16)), ResNet)
    assert isinstance(build_model("lenet", (1, 8, 8), 3), LeNet)


def test_vit_default_patch_size() -> None:
    assert ViT((1, 28, 28), 10).patch_size == 4
    assert ViT((1, 8, 8), 10).patch_size == 2


def test_mlp_default_parameter_count() -> None:
    model = MLP((1, 28, 28), 10)
    expected = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_has_no_batchnorm() -> None:
    model = build_model("resnet", (1, 28, 28), 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert len(list(model.buffers())) == 0


def test_lenet_parameters_only_in_conv_and_linear() -> None:
    model = build_model("lenet", (1, 28, 28), 10)
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert isinstance(m, nn.Conv2d | nn.Linear)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_deterministic_given_seed_and_in_eval_mode(name, shape) -> None:
    a, b = _build(name, shape), _build(name, shape)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    x = _batch(shape)
    a.eval()
    with torch.no_grad():
        out = a(x)
        assert torch.equal(out, a(x))
        a.train()
        torch.testing.assert_close(a(x), out)  # nothing behaves differently in train mode


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_vmap_per_example_matches_batched_forward(name, shape) -> None:
    model = _build(name, shape)
    params = dict(model.named_parameters())
    x = _batch(shape)

    def per_example(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    with torch.no_grad():
        torch.testing.assert_close(vmap(per_example, in_dims=(None, 0))(params, x), model(x))


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_vmap_per_example_gradients_match_loop(name, shape) -> None:
    model = _build(name, shape)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = _batch(shape, n=3), torch.tensor([0, 3, 9])

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    per_ex = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        ref = torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), model.parameters()
        )
        for (pname, _), r in zip(model.named_parameters(), ref, strict=True):
            torch.testing.assert_close(per_ex[pname][i], r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_jvp_is_adjoint_of_vjp(name, shape) -> None:
    """<u, J t> from torch.func.jvp equals <J^T u, t> from torch.func.vjp (exact, kink-proof)."""
    model = _build(name, shape).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    x = _batch(shape, n=3, dtype=torch.float64)

    def f(p):
        return functional_call(model, p, (x,))

    out, jv = jvp(f, (params,), (tangents,))
    torch.testing.assert_close(out, model(x))
    u = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (jtu,) = vjp(f, params)[1](u)
    lhs = (u * jv).sum()
    rhs = sum((jtu[k] * tangents[k]).sum() for k in params)
    torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    ("name", "options"),
    [("mlp", {"activation": "gelu"}), ("resnet", {"activation": "silu"}), ("vit", {})],
)
@pytest.mark.parametrize("shape", SHAPES, ids=["8x8", "28x28"])
def test_jvp_matches_finite_difference_for_smooth_models(name, options, shape) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    x = _batch(shape, n=3, dtype=torch.float64)

    def f(p):
        return functional_call(model, p, (x,))

    _, jv = jvp(f, (params,), (tangents,))
    eps = 1e-6
    plus = f({k: v + eps * tangents[k] for k, v in params.items()})
    minus = f({k: v - eps * tangents[k] for k, v in params.items()})
    torch.testing.assert_close(jv, (plus - minus) / (2 * eps), atol=1e-6, rtol=1e-5)
