"""``VariationalModel``: Gaussian weights on chosen layers of any Linear/Conv2d network.

The chosen layers carry q(w_l) = N(μ_l, S_l S_lᵀ) over their P_l weights and biases,
with S_l ∈ R^{P_l×R} (``covariance="lowrank"``) or S_l = diag(s_l)
(``covariance="diagonal"``); the other parameters stay deterministic. A forward
pass draws w_l = μ_l + S_l z_l, z_l ~ N(0, I_R) (one z per layer shared by its weight
and bias) and evaluates the network through the functional view
(``torch.func.functional_call``), so a sampled pass never writes into the parameters.
The wrapper holds its own deep copy of the module it is given (``vnet.model``): the
caller's module is never modified, neither by ``init=True`` nor by training.
Sampled forward passes follow the train/eval mode like any PyTorch model: in train mode
dropout fires and BatchNorm uses batch statistics (updating its running statistics);
``predict`` always runs in eval mode.

The means μ_l *are* the wrapped module's own parameters; the factors live in
``self.factors`` (one tensor per variational parameter; low rank: stored transposed,
shape (R, numel), columns in that parameter's ``reshape(-1)`` order; :meth:`factor`
returns S_l ∈ R^{P_l×R}, weight rows then bias rows). The transposed storage makes
S z a contiguous pass and its gradient z gᵀ a single write. Initialisation is the
prior (docs/methods.md §2): with ``init=True`` μ at the parametrization's init; each entry
of S_l drawn from N(0, s²/R) with s the layer's init std, so E[S_l S_lᵀ] = s² I;
diagonal: s_i = s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tacitbayes.batches import Inputs, call_model, move_inputs, n_examples
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, eval_mode, exact_kernels
from tacitbayes.likelihoods import LOSSES, check_likelihood, mc_predictive, mean_loss
from tacitbayes.variational import parametrization as P

__all__ = ["COVARIANCES", "LOSSES", "VariationalModel", "loss_value"]

COVARIANCES = ("lowrank", "diagonal")
Params = dict[str, Tensor]


def loss_value(output: Tensor, y: Tensor, loss: str | Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Mean over the batch of ℓ(f_n, y_n): ``loss(f, y)`` if callable, else the named loss (mean_loss)."""
    if callable(loss):
        return loss(output, y)
    return mean_loss(output, y, loss)


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    valid = [n for n, _ in P.weight_layers(model)]
    if layers is None:
        if not valid:
            raise InputError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer")
        return tuple(dict.fromkeys([valid[0], valid[-1]]))
    if isinstance(layers, str):
        layers = [layers]
    names = list(layers)
    modules = dict(model.named_modules())
    bad = [n for n in names if not isinstance(n, str) or n not in modules or n not in valid]
    if bad:
        why = [
            f"{n!r} ({'not a submodule' if n not in modules else type(modules[n]).__name__})"
            for n in bad
        ]
        raise InputError(
            f"cannot make {', '.join(why)} variational: layers must name nn.Linear/nn.Conv2d "
            f"submodules; valid names are {valid}"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"layer name(s) {dupes} given more than once")
    return tuple(n for n in valid if n in set(names))


def _prefixed(layer: str, pname: str) -> str:
    return f"{layer}.{pname}" if layer else pname


class _LowRankSample(torch.autograd.Function):
    """w = μ + Fᵀz for a factor stored transposed, F = Sᵀ ∈ R^{R×P}; ∂/∂F = z gᵀ, written once."""

    @staticmethod
    def forward(mu: Tensor, factor_t: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        return torch.addmv(mu, factor_t.t(), z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad, torch.outer(z, grad), None


class VariationalModel(nn.Module):
    """q(w) = Π_l N(μ_l, S_l S_lᵀ) on chosen layers of ``model``; f(x) evaluated at w = μ + S z.

    ``init`` (required, keyword): ``True`` starts from the prior, as IBVI does: every
    Linear/Conv2d is re-initialised under ``parametrization`` (see
    :mod:`tacitbayes.variational.parametrization`), so trained weights are discarded;
    ``False`` keeps the module's weights as the means (e.g. to start from a MAP fit). Either
    way ``model`` itself is left untouched: the wrapper works on a deep copy, ``vnet.model``.
    ``layers``: module names of nn.Linear / nn.Conv2d submodules (default: the first and
    the last such layer; ``[]``: none, a deterministic network with the parametrization).
    Mode: in train mode (``vnet.train()``, the nn.Module default) the sampled
    passes of ``forward``/``expected_loss`` run the wrapped network with its own train
    flags (dropout fires, BatchNorm normalises by batch statistics and updates its running
    statistics); in eval mode, and always in ``predict``/``functional``, it runs in eval
    mode (dropout off, BatchNorm on running statistics), flags restored afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        covariance: str = "lowrank",
        rank: int = 8,
        parametrization: str = "sp",
        *,
        init: bool,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InputError(f"expected an nn.Module, got {type(model).__name__}")
        if not isinstance(init, bool):
            raise InputError(
                f"init must be True (start from the prior, re-initialising a copy) or False "
                f"(keep the weights as the means), got {init!r}"
            )
        if covariance not in COVARIANCES:
            raise InputError(
                f"unknown covariance {covariance!r}; available: {', '.join(COVARIANCES)}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise InputError(f"rank must be an integer >= 1, got {rank!r}")
        _resolve_layers(model, layers)  # bad names fail before the copy
        model = copy.deepcopy(model)  # the caller's module is never modified
        self.model = model
        self.parametrization = P.check_parametrization(parametrization)
        self.covariance = covariance
        self.rank = rank if covariance == "lowrank" else 1
        self.layers = _resolve_layers(model, layers)
        self.infos = P.layer_infos(model)
        if init:
            P.parametrize(model, self.parametrization)
        modules = dict(model.named_modules())
        self._groups: list[tuple[str, list[str]]] = []  # (layer, its variational param names)
        self.var_names: list[str] = []
        self.factors = nn.ParameterList()
        for layer in self.layers:
            std = P.init_std(self.infos[layer], self.parametrization)
            names = []
            for pname, p in modules[layer].named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                names.append(_prefixed(layer, pname))
                if covariance == "lowrank":  # stored as Sᵀ (R × P): contiguous rows for Sz
                    factor = torch.randn(rank, p.numel(), dtype=p.dtype, device=p.device)
                    factor.mul_(std / rank**0.5)
                else:
                    factor = torch.full_like(p, std)
                self.factors.append(nn.Parameter(factor))
            if not names:
                raise InputError(f"layer {layer!r} has no trainable parameter to make variational")
            self._groups.append((layer, names))
            self.var_names += names
        self.fmodel = FunctionalModel(model)
        missing = [n for n in self.var_names if n not in self.fmodel.param_names]
        if missing:
            raise InputError(f"variational parameters {missing} are shared or frozen")
        self.register_buffer("temperature", torch.ones(()))
        self.temperature_tuning: dict[
            str, Any
        ] = {}  # fit_temperature's search record (edge, range)

    # ------------------------------------------------------------------ sampling

    def _live(self) -> dict[str, Tensor]:
        return dict(self.model.named_parameters())

    def sample_params(self, generator: torch.Generator | None = None) -> Params:
        """One draw w = μ + S z of all free parameters (deterministic ones as they are), with grad."""
        live = self._live()
        params: Params = {n: live[n] for n in self.fmodel.param_names}
        k = 0
        for _, names in self._groups:
            ref = self.factors[k]
            if self.covariance == "lowrank":
                z = torch.randn(self.rank, generator=generator, dtype=ref.dtype, device=ref.device)
            for name in names:
                mu, factor = live[name], self.factors[k]
                if self.covariance == "lowrank":
                    flat = _LowRankSample.apply(mu.reshape(-1), factor, z)
                    params[name] = flat.view_as(mu)
                else:
                    noise = torch.randn(
                        mu.shape, generator=generator, dtype=mu.dtype, device=mu.device
                    )
                    params[name] = torch.addcmul(mu, factor, noise)
                k += 1
        return params

    def sample(self, generator: torch.Generator | None = None) -> Params:
        """A detached draw of the parameters, keyed by ``model.named_parameters()`` names."""
        with torch.no_grad():
            return {n: t.detach().clone() for n, t in self.sample_params(generator).items()}

    def sample_model(self, generator: torch.Generator | None = None) -> nn.Module:
        """A plain copy of the wrapped network whose weights are one draw from q."""
        return self._copy_with(self.sample(generator))

    def mean_model(self) -> nn.Module:
        """A plain copy of the wrapped network at the mean weights μ."""
        return copy.deepcopy(self.model)

    def _copy_with(self, params: Params) -> nn.Module:
        net = copy.deepcopy(self.model)
        live = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in params.items():
                live[name].copy_(value)
        return net

    def factor(self, layer: str) -> Tensor:
        """S_l ∈ R^{P_l×R} of a variational layer (diagonal: the vector s_l), rows weight then bias."""
        k = 0
        for name, names in self._groups:
            if name == layer:
                parts = list(self.factors[k : k + len(names)])
                if self.covariance == "diagonal":
                    return torch.cat([f.reshape(-1) for f in parts])
                return torch.cat([f.t() for f in parts])
            k += len(names)
        raise InputError(f"{layer!r} is not a variational layer; these are {list(self.layers)}")

    def mean(self, layer: str) -> Tensor:
        """μ_l, the layer's weights and biases flattened (weight first)."""
        live = self._live()
        for name, names in self._groups:
            if name == layer:
                return torch.cat([live[n].reshape(-1) for n in names])
        raise InputError(f"{layer!r} is not a variational layer; these are {list(self.layers)}")

    # ------------------------------------------------------------------ evaluation

    def functional(self, params: Params, x: Inputs) -> Tensor:
        """f(params, x) through the functional view (eval mode, the module left untouched)."""
        return self.fmodel(params, x)

    def forward(self, x: Inputs, generator: torch.Generator | None = None) -> Tensor:
        """f(μ + S z, x) for one fresh draw z; train mode: the network's own train flags, else eval.

        Samples run one after another (no vmap over samples), so in train mode each draw is
        its own BatchNorm batch and updates the running statistics once.
        """
        params = self.sample_params(generator)
        if self.training:  # the module's own buffers: BatchNorm running stats updated in place
            first = next(iter(params.values()))
            x = move_inputs(x, first.device, first.dtype)
            with exact_kernels():
                return call_model(lambda *a, **k: functional_call(self.model, params, a, k), x)
        return self.fmodel(params, x)

    def expected_loss(
        self,
        x: Inputs,
        y: Tensor,
        n_samples: int = 1,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Reparametrized MC estimate (1/K) Σ_k mean_n ℓ(y_n, f(μ + S z_k, x_n)) of E_q[mean loss]; no KL.

        The K passes run in the current mode (see :meth:`forward`): in train mode dropout
        fires and each pass updates BatchNorm's running statistics.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        if n_examples(x) != len(y):
            raise InputError(f"x has {n_examples(x)} rows but y has {len(y)}")
        total = loss_value(self(x, generator), y, loss)
        for _ in range(n_samples - 1):
            total = total + loss_value(self(x, generator), y, loss)
        return total / n_samples

    @torch.no_grad()
    def predict(
        self,
        x: Inputs,
        n_samples: int = 32,
        temperature: float | None = None,
        *,
        samples: Sequence[Params] | None = None,
        generator: torch.Generator | None = None,
        likelihood: str = "classification",
        sigma_noise: float = 0.0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """MC predictive over w_k ~ q: (1/K) Σ_k softmax(f(w_k, x)/T), [1 − p̄, p̄] or (mean_k f, var_k f + σ²).

        ``likelihood`` (see :mod:`tacitbayes.likelihoods`): "classification" gives class
        probabilities (len(x), C); "binary" (one logit) gives (len(x), 2) with
        p̄ = (1/K) Σ_k σ(f(w_k, x)/T); "regression" gives (mean, variance) of the outputs
        over the K samples, each (len(x), O), the variance plus ``sigma_noise``² (σ, the
        observation noise, is not learned by IBVI: pass it; 0 leaves the spread of f).
        T is ``temperature`` or the fitted ``vnet.temperature`` (not used in regression).
        Always in eval mode (dropout off, BatchNorm on running statistics); the train/eval
        flags of this model and its submodules are restored afterwards.
        """
        if check_likelihood(likelihood) == "regression":
            temp = 1.0 if temperature is None else temperature
        else:
            temp = float(self.temperature) if temperature is None else temperature
        if samples is None:
            if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
                raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
            draws: Iterable[Params] = (self.sample(generator) for _ in range(n_samples))
        elif not samples:
            raise InputError("samples is empty")
        else:
            draws = samples
        with eval_mode(self):
            outputs = (self.fmodel(s, x) for s in draws)
            return mc_predictive(outputs, likelihood, temp, sigma_noise)

    # ------------------------------------------------------------------ optimisation

    def named_multipliers(self, rule: str = "sgd") -> dict[str, float]:
        """lr multiplier of every trainable tensor; factors get their mean's ×1/R (low rank)."""
        base = P.named_multipliers(self.model, self.parametrization, rule)
        out = {f"model.{n}": m for n, m in base.items()}
        cov = 1.0 / self.rank if self.covariance == "lowrank" else 1.0
        for k, name in enumerate(self.var_names):
            out[f"factors.{k}"] = base[name] * cov
        return out

    def param_groups(self, lr: float, rule: str = "sgd", weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups with lr × multiplier (key ``lr_multiplier``); no decay on the factors."""
        if not (lr > 0 and lr < float("inf")):
            raise InputError(f"lr must be a positive number, got {lr}")
        if weight_decay < 0:
            raise InputError(f"weight_decay must be non-negative, got {weight_decay}")
        mults = self.named_multipliers(rule)
        scales = P.decay_scale(self.model, self.parametrization, rule)
        live = dict(self.named_parameters())
        entries = []
        for name, mult in mults.items():
            inner = name.removeprefix("model.")
            decay = weight_decay * scales[inner] if name.startswith("model.") else 0.0
            entries.append((live[name], mult, decay))
        return P.group_parameters(entries, lr)

    def optimizer(
        self, optimizer_cls: type = torch.optim.SGD, lr: float = 1e-2, **kwargs: Any
    ) -> torch.optim.Optimizer:
        """``optimizer_cls`` over μ, S and the deterministic parameters with per-group lr multipliers."""
        rule = kwargs.pop("rule", None) or P.optimizer_rule(optimizer_cls)
        decay = float(kwargs.pop("weight_decay", 0.0))
        return optimizer_cls(self.param_groups(lr, rule, decay), lr=lr, **kwargs)

    # ------------------------------------------------------------------ state

    def config(self) -> dict[str, Any]:
        """The settings that define the shapes of this model's state."""
        return {
            "layers": list(self.layers),
            "covariance": self.covariance,
            "rank": self.rank,
            "parametrization": self.parametrization,
        }

    def get_extra_state(self) -> dict[str, Any]:
        """Saved with ``state_dict`` so a mismatched load is caught."""
        return self.config()

    def set_extra_state(self, state: Any) -> None:
        """Check that a loaded state was saved by a VariationalModel with the same settings."""
        if state != self.config():
            raise InputError(
                f"state was saved with settings {state}, this model has {self.config()}"
            )

    def extra_repr(self) -> str:
        """One line of settings for ``print(vnet)``."""
        c = self.config()
        return ", ".join(f"{k}={v!r}" for k, v in c.items())
