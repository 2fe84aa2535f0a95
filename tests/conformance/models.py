"""The models of the conformance suite, trained a few steps on small synthetic data, in float64.

Each builder returns a :class:`Case`: a trained model in eval mode, its N training rows
(inputs: a Tensor or a dict of keyword tensors; targets), test inputs, the likelihood and
the training loss, and the layers a ``VariationalModel`` makes variational. Builders are
cached (:func:`case`), so every test module shares one trained model per name; the fits
work on deep copies, so a fit that changed its model could not leak into another cell.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.batches import call_model, slice_inputs
from tacitbayes.likelihoods import LIKELIHOODS, mean_loss

N_TRAIN = 44  # batches of 16: 16, 16, 12 (drop_last keeps 32)
N_TEST = 6
BATCH = 16
CLASSES = 3
FEATURES = 6
VOCAB, SEQ, PAD = 40, 8, 0


@dataclass
class Case:
    """A trained model and its data: what one cell of the suite fits a posterior to."""

    name: str
    model: nn.Module
    inputs: Tensor | dict[str, Tensor]  # N rows
    targets: Tensor
    x_test: Tensor | dict[str, Tensor]
    likelihood: str = "classification"
    var_layers: list[str] | None = None  # VariationalModel(layers=...); None: its default
    form: str = "tuple"  # the natural batch form of this model: "tuple" or "dict"
    batch_size: int = BATCH
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> str:
        return LIKELIHOODS[self.likelihood]

    @property
    def n(self) -> int:
        return len(self.targets)

    def fresh_model(self) -> nn.Module:
        """A deep copy of the trained model (eval mode)."""
        model = copy.deepcopy(self.model)
        model.eval()
        return model

    def rows(self, index: Tensor) -> tuple[Tensor | dict[str, Tensor], Tensor]:
        """(inputs, targets) of the rows ``index``, in that order."""
        if isinstance(self.inputs, Tensor):
            return self.inputs[index], self.targets[index]
        return {k: v[index] for k, v in self.inputs.items()}, self.targets[index]


# ---------------------------------------------------------------------- the modules


class MLP(nn.Module):
    """Two tanh hidden layers; ``forward(x)`` (so dict batches {"x": ...} reach it by keyword)."""

    def __init__(self, n_in: int = FEATURES, width: int = 12, n_out: int = CLASSES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class ResCNN(nn.Module):
    """conv-BN-ReLU, a residual conv-BN block, global average pooling, a linear head (8×8 inputs)."""

    def __init__(self, channels: int = 4, n_out: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(h + self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


class TokenClassifier(nn.Module):
    """nn.Embedding + nn.TransformerEncoderLayer (batch_first, dropout 0) + masked mean pooling + Linear.

    The padding mask is built inside ``forward`` from the pad id.
    """

    def __init__(self, dim: int = 8, n_out: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(dim, n_out)

    def forward(self, input_ids: Tensor) -> Tensor:
        pad = input_ids == PAD
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class SharedLinear(nn.Module):
    """Calls one nn.Linear twice (weight sharing across depth)."""

    def __init__(self, n_in: int = FEATURES, width: int = 8, n_out: int = CLASSES) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.mid = nn.Linear(width, width)
        self.out = nn.Linear(width, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.mid(h))
        h = torch.tanh(self.mid(h))
        return self.out(h)


def bert(attn: str) -> nn.Module:
    """transformers.BertForSequenceClassification from a tiny config (dropout 0: training is seeded)."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return transformers.BertForSequenceClassification(config)


# ---------------------------------------------------------------------- data and training


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _teacher_labels(features: Tensor, seed: int, n_out: int = CLASSES) -> Tensor:
    w = torch.randn(features.shape[-1], n_out, generator=_gen(seed + 1), dtype=features.dtype)
    return (features @ w).argmax(-1)


def tokens(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask): random ids 1..VOCAB-1, right-padded with PAD to SEQ; lengths 3..SEQ."""
    g = _gen(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    return ids * mask + PAD * (1 - mask), mask


def train(
    model: nn.Module, inputs: Any, targets: Tensor, loss: str, steps: int, lr: float = 1e-2
) -> nn.Module:
    """A few full-batch Adam steps (train mode: BatchNorm updates its statistics), then eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        mean_loss(call_model(model, inputs), targets, loss).backward()
        opt.step()
    model.eval()
    return model


def _targets(likelihood: str, features: Tensor, seed: int) -> Tensor:
    if likelihood == "classification":
        return _teacher_labels(features, seed)
    if likelihood == "binary":  # one logit, float 0/1 targets of shape (N,)
        return _teacher_labels(features, seed, 2).to(torch.float64)
    w = torch.randn(features.shape[-1], 2, generator=_gen(seed + 2), dtype=torch.float64)
    noise = 0.1 * torch.randn(len(features), 2, generator=_gen(seed + 3), dtype=torch.float64)
    return torch.tanh(features @ w) + noise  # regression: (N, 2) real targets


N_OUT = {"classification": CLASSES, "binary": 1, "regression": 2}


def build_mlp(likelihood: str = "classification") -> Case:
    torch.manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, FEATURES, generator=_gen(10), dtype=torch.float64)
    y = _targets(likelihood, x, 10)
    model = MLP(n_out=N_OUT[likelihood]).double()
    train(model, x[:N_TRAIN], y[:N_TRAIN], LIKELIHOODS[likelihood], steps=40)
    return Case(f"mlp-{likelihood}", model, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], likelihood)


def build_cnn() -> Case:
    torch.manual_seed(1)
    x = torch.randn(N_TRAIN + N_TEST, 1, 8, 8, generator=_gen(11), dtype=torch.float64)
    y = _teacher_labels(x.flatten(1), 11)
    model = ResCNN().double()
    train(model, x[:N_TRAIN], y[:N_TRAIN], "cross_entropy", steps=15)
    return Case("cnn-bn-residual", model, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:])


def build_token() -> Case:
    torch.manual_seed(2)
    ids, mask = tokens(N_TRAIN + N_TEST, 12)
    y = torch.randint(0, CLASSES, (N_TRAIN + N_TEST,), generator=_gen(13))
    model = TokenClassifier().double()
    train(model, ids[:N_TRAIN], y[:N_TRAIN], "cross_entropy", steps=15)
    return Case("token-transformer", model, ids[:N_TRAIN], y[:N_TRAIN], ids[N_TRAIN:])


def _bert_data() -> tuple[dict[str, Tensor], Tensor]:
    ids, mask = tokens(N_TRAIN + N_TEST, 14)
    y = torch.randint(0, CLASSES, (N_TRAIN + N_TEST,), generator=_gen(15))
    return {"input_ids": ids, "attention_mask": mask}, y


def build_bert(attn: str) -> Case:
    torch.manual_seed(3)
    x, y = _bert_data()
    train_x = slice_inputs(x, 0, N_TRAIN)
    model = bert(attn).double()
    train(model, train_x, y[:N_TRAIN], "cross_entropy", steps=10)
    return Case(
        f"bert-{attn}", model, train_x, y[:N_TRAIN], slice_inputs(x, N_TRAIN, N_TRAIN + N_TEST),
        form="dict",
    )  # fmt: skip


def build_bert_lora() -> Case:
    import peft

    base = case("bert-sdpa")
    torch.manual_seed(4)
    model = peft.get_peft_model(
        copy.deepcopy(base.model), peft.LoraConfig(r=4, target_modules=["query", "value"])
    )
    model.double()
    train(model, base.inputs, base.targets, "cross_entropy", steps=10)  # lora_B leaves 0
    layers = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    return Case(
        "bert-lora", model, base.inputs, base.targets, base.x_test, var_layers=layers, form="dict"
    )


def build_shared() -> Case:
    torch.manual_seed(5)
    x = torch.randn(N_TRAIN + N_TEST, FEATURES, generator=_gen(16), dtype=torch.float64)
    y = _teacher_labels(x, 16)
    model = SharedLinear().double()
    train(model, x[:N_TRAIN], y[:N_TRAIN], "cross_entropy", steps=40)
    return Case(
        "shared-linear", model, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], var_layers=["mid", "out"]
    )


BUILDERS = {
    "mlp": lambda: case("mlp-classification"),
    "mlp-classification": lambda: build_mlp("classification"),
    "mlp-binary": lambda: build_mlp("binary"),
    "mlp-regression": lambda: build_mlp("regression"),
    "cnn-bn-residual": build_cnn,
    "token-transformer": build_token,
    "bert-sdpa": lambda: build_bert("sdpa"),
    "bert-eager": lambda: build_bert("eager"),
    "bert-lora": build_bert_lora,
    "shared-linear": build_shared,
}
MODELS = [
    "mlp",
    "cnn-bn-residual",
    "token-transformer",
    "bert-sdpa",
    "bert-eager",
    "bert-lora",
    "shared-linear",
]


@functools.cache
def case(name: str) -> Case:
    """The trained case ``name`` (built once per session)."""
    return BUILDERS[name]()
