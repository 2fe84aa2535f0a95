"""Attention models written by others: nn.MultiheadAttention, nn.Transformer*Layer, SDPA, BERT, LoRA.

Every curvature quantity is checked against dense autograd per example in float64
(``torch.autograd.functional.jacobian``, reverse mode through torch's own kernels), and the
posteriors are fitted end to end: no glue code in the models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

import tacitbayes as tb
from tacitbayes import functional as tbf
from tacitbayes.curvature import KFAC, ggn_diagonal, kernel_factors
from tacitbayes.curvature.columns import dense_ggn_pass
from tacitbayes.curvature.ntk import ntk_blocks
from tacitbayes.functional import FunctionalModel, exact_kernels

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64
PAD, VOCAB, N, T, D = 0, 20, 24, 6, 8


def _pool(h: Tensor, pad: Tensor) -> Tensor:
    """Mean of h (N, T, D) over the positions that are not padding."""
    keep = (~pad).to(h.dtype).unsqueeze(-1)
    return (h * keep).sum(1) / keep.sum(1)


class EncoderClassifier(nn.Module):
    """Embedding → nn.TransformerEncoderLayer (src_key_padding_mask from the pad id) → pool → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.encoder = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(D, 3)

    def forward(self, x: Tensor) -> Tensor:
        pad = x == PAD
        return self.head(_pool(self.encoder(self.emb(x), src_key_padding_mask=pad), pad))


class SequenceFirstAttention(nn.Module):
    """nn.MultiheadAttention with batch_first=False, key_padding_mask and need_weights=False."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.att = nn.MultiheadAttention(D, 2)
        self.head = nn.Linear(D, 3)

    def forward(self, x: Tensor) -> Tensor:
        pad = x == PAD
        h = self.emb(x).transpose(0, 1)  # (T, N, D)
        a, _ = self.att(h, h, h, key_padding_mask=pad, need_weights=False)
        return self.head(_pool(torch.tanh(a + h).transpose(0, 1), pad))


class DecoderClassifier(nn.Module):
    """nn.TransformerDecoderLayer on its own embeddings as memory, padding masks on both."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.decoder = nn.TransformerDecoderLayer(D, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(D, 3)

    def forward(self, x: Tensor) -> Tensor:
        pad, h = x == PAD, self.emb(x)
        out = self.decoder(h, h, tgt_key_padding_mask=pad, memory_key_padding_mask=pad)
        return self.head(_pool(out, pad))


class SDPAttention(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention and a boolean padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.head = nn.Linear(D, 3)

    def forward(self, x: Tensor) -> Tensor:
        pad, h = x == PAD, self.emb(x)
        q, k, v = self.qkv(h).unflatten(-1, (3, 2, D // 2)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return self.head(_pool(h + self.out(a.transpose(1, 2).flatten(2)), pad))


def bert(attn: str, lora: bool = False) -> nn.Module:
    """A one-layer BERT classifier built from its config (no download), LoRA on query/value."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation=attn,
    )
    model = transformers.BertForSequenceClassification(config)
    if lora:
        adapter = peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)
        with warnings.catch_warnings():  # peft reads a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            model = peft.get_peft_model(model, adapter)
    return model


TORCH_MODELS = {
    "encoder": EncoderClassifier,
    "mha_seq_first": SequenceFirstAttention,
    "decoder": DecoderClassifier,
    "sdpa": SDPAttention,
}
HF_MODELS = {
    "bert_sdpa": lambda: bert("sdpa"),
    "bert_eager": lambda: bert("eager"),
    "bert_lora": lambda: bert("sdpa", lora=True),
}
MODELS: dict[str, Callable[[], nn.Module]] = {**TORCH_MODELS, **HF_MODELS}


def make(name: str) -> tuple[nn.Module, list[Any], Any]:
    """(model in float64 and eval mode, a loader of two batches, test inputs of four examples)."""
    torch.manual_seed(0)
    model = MODELS[name]().to(DT).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (N, T), generator=gen)
    ids[::3, 4:] = PAD  # every third example padded at the end
    ids[1::5, 3:] = PAD
    y = torch.randint(0, 3, (N,), generator=gen)
    half = N // 2
    if name in TORCH_MODELS:
        return model, [(ids[:half], y[:half]), (ids[half:], y[half:])], ids[:4]
    mask = (ids != PAD).long()
    loader = [
        {"input_ids": ids[s], "attention_mask": mask[s], "labels": y[s]}
        for s in (slice(0, half), slice(half, N))
    ]
    return model, loader, {"input_ids": ids[:4], "attention_mask": mask[:4]}


def _inputs(batch: Any) -> tuple[Any, int]:
    if isinstance(batch, dict):
        x = {k: v for k, v in batch.items() if k != "labels"}
        return x, len(batch["labels"])
    return batch[0], len(batch[1])


def _logits(model: nn.Module, params: dict[str, Tensor], x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return tb.batches.model_output(functional_call(model, params, (x,)))
    return tb.batches.model_output(functional_call(model, params, (), x))


def reference_rows(model: nn.Module, loader: list[Any], names: list[str]) -> tuple[Tensor, Tensor]:
    """(J (N, O, P) per example by autograd.functional.jacobian, Λ_n = diag p − p pᵀ (N, O, O))."""
    live = dict(model.named_parameters())
    base = tuple(live[n].detach() for n in names)
    jacobians, hessians = [], []
    for batch in loader:
        x, n = _inputs(batch)
        for i in range(n):
            xi = tb.batches.slice_inputs(x, i, i + 1)

            def f(*ps: Tensor, xi: Any = xi) -> Tensor:
                return _logits(model, dict(zip(names, ps, strict=True)), xi)[0]

            jac = torch.autograd.functional.jacobian(f, base)
            jacobians.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1))
            with torch.no_grad():
                p = f(*base).softmax(-1)
            hessians.append(torch.diag(p) - torch.outer(p, p))
    return torch.stack(jacobians), torch.stack(hessians)


def _close(got: Tensor, want: Tensor) -> None:
    atol = 1e-9 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=atol)


def _free(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _few(model: nn.Module) -> list[str]:
    """A few parameters for a dense block: attention-owned ones and the last one."""
    names = _free(model)
    picked = [n for n in names if "in_proj_bias" in n or "out_proj.bias" in n or "lora_B" in n]
    picked += [n for n in names if "attention.output.dense.bias" in n or "LayerNorm.weight" in n]
    return [n for n in names if n in {*picked[:3], names[-1]}]


@pytest.fixture(autouse=True)
def _quiet_fallback() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.func.vmap cannot trace", RuntimeWarning)
        yield


@pytest.mark.parametrize("name", list(MODELS))
def test_ggn_diagonal_dense_block_and_kfac_diagonal_blocks_match_autograd(name: str) -> None:
    model, loader, _ = make(name)
    names = _free(model)
    J, lam = reference_rows(model, loader, names)
    ggn = torch.einsum("nop,noq,nqr->pr", J, lam, J) if J.shape[-1] <= 1500 else None
    diag = torch.einsum("nop,noq,nqp->p", J, lam, J)
    _close(ggn_diagonal(model, "cross_entropy", loader, reduction="sum"), diag)
    few = _few(model)
    index = torch.cat([_positions(model, names, n) for n in few])
    block = torch.einsum("nop,noq,nqr->pr", J[..., index], lam, J[..., index])
    _close(dense_ggn_pass(model, "cross_entropy", loader, few).curvature, block)
    if ggn is not None:
        _close(block, ggn[index[:, None], index])
    kfac = KFAC(model, "cross_entropy", loader, reduction="sum")
    mha = [m for m, mod in model.named_modules() if isinstance(mod, nn.MultiheadAttention)]
    assert (name in ("encoder", "mha_seq_first", "decoder")) == bool(mha)
    for m in mha:  # MHA's projections: exact diagonal blocks, never Kronecker
        assert {m, f"{m}.out_proj"} <= set(kfac.diagonals) and f"{m}.out_proj" not in kfac.layers
    for block_name in kfac.diagonals:
        _close(kfac.diagonal()[kfac._diag_index[block_name]], diag[kfac._diag_index[block_name]])


def _positions(model: nn.Module, names: list[str], name: str) -> Tensor:
    live, start = dict(model.named_parameters()), 0
    for n in names:
        if n == name:
            return torch.arange(start, start + live[n].numel())
        start += live[n].numel()
    raise KeyError(name)


def _predict_ok(probs: Tensor) -> None:
    assert probs.shape == (4, 3) and bool(torch.isfinite(probs).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=probs.dtype))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("structure", ["diag", "kron", "last_layer"])
def test_laplace_fits_and_predicts(name: str, structure: str) -> None:
    model, loader, x = make(name)
    if structure == "last_layer" and name == "bert_lora":
        # the frozen head is not a last layer of the adapter's parameters: two LoRA
        # branches reach the output, and the library says so instead of guessing
        with pytest.raises(tb.errors.InputError, match="ambiguous"):
            tb.Laplace(model, "classification", structure=structure).fit(loader)
        return
    la = tb.Laplace(model, "classification", structure=structure).fit(loader)
    assert math.isfinite(float(la.log_marginal_likelihood()))
    _predict_ok(la.predict(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_kernel_rows_match_autograd(name: str) -> None:
    """J_n J_nᵀ (logits) and ‖∇_θ ℓ_n‖² (loss rows) from the kernel factors, per example."""
    model, loader, _ = make(name)
    x, n = _inputs(loader[0])
    y = loader[0]["labels"] if isinstance(loader[0], dict) else loader[0][1]
    J, _ = reference_rows(model, [loader[0]], _free(model))
    _close(ntk_blocks(kernel_factors(model, x)), J @ J.mT)
    with torch.no_grad():
        logits = torch.cat(
            [_logits(model, {}, tb.batches.slice_inputs(x, i, i + 1)) for i in range(n)]
        )
    r = logits.softmax(-1) - F.one_hot(y, 3).to(DT)  # ∂ℓ_n/∂f_n of the cross-entropy
    grads = torch.einsum("nop,no->np", J, r)
    rows = ntk_blocks(kernel_factors(model, x, y, outputs="loss"))
    _close(rows.reshape(-1), grads.square().sum(-1))


@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_torch_attention_models_stay_on_the_vmap_route(name: str) -> None:
    model, loader, _ = make(name)
    tbf._LOOP_WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dense_ggn_pass(model, "cross_entropy", loader, _few(model))
    assert not [w for w in caught if "vmap cannot trace" in str(w.message)]


@pytest.mark.parametrize("name", list(MODELS))
def test_projected_posterior_tunes_and_predicts(name: str) -> None:
    model, loader, x = make(name)
    post = tb.ProjectedPosterior(model, "classification").fit(loader)
    post.optimize_prior_precision()
    assert math.isfinite(float(post.prior_precision)) and float(post.prior_precision) > 0
    _predict_ok(post.predict(x))


def test_exact_kernels_equal_the_fused_kernels_and_restore_the_flag() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, 2, batch_first=True).to(DT).eval()
    h = torch.randn(4, T, D, dtype=DT)
    pad = torch.zeros(4, T, dtype=torch.bool)
    pad[1, 4:] = True
    q, k, v = torch.randn(3, 4, 2, T, D // 2, dtype=DT).unbind(0)
    with torch.no_grad():
        fused = mha(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        fused_sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None])
        with exact_kernels():
            assert not torch.backends.mha.get_fastpath_enabled()
            exact = mha(h, h, h, key_padding_mask=pad, need_weights=False)[0]
            exact_sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None])
    assert torch.backends.mha.get_fastpath_enabled()
    torch.testing.assert_close(exact, fused, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(exact_sdpa, fused_sdpa, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["encoder", "bert_sdpa"])
def test_forward_mode_through_the_functional_model(name: str) -> None:
    """J v by jvp (the MHA fast path and fused SDPA have no forward AD) equals reverse-mode J v."""
    model, loader, _ = make(name)
    x, _ = _inputs(loader[0])
    fmodel = FunctionalModel(model)
    params = fmodel.params()
    gen = torch.Generator().manual_seed(2)
    v = {k: torch.randn(t.shape, generator=gen, dtype=DT) for k, t in params.items()}
    _, jv = jvp(lambda p: fmodel(p, x), (params,), (v,))
    names = list(params)
    J, _ = reference_rows(model, [loader[0]], names)
    want = J @ torch.cat([v[k].reshape(-1) for k in names])
    _close(jv, want)


def test_vmap_fallback_warns_once_per_model_class() -> None:
    model, loader, _ = make("bert_eager")
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    tbf._LOOP_WARNED.discard(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ggn_diagonal(model, "cross_entropy", loader)
        ggn_diagonal(model, "cross_entropy", loader)
    mine = [w for w in caught if "vmap cannot trace" in str(w.message)]
    assert len(mine) == 1 and mine[0].category is RuntimeWarning
    assert "BertForSequenceClassification" in str(mine[0].message)
