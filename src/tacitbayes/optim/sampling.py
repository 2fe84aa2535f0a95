"""Shared machinery of the variational optimizers: q(θ) = N(μ, diag σ²) sampled into the model.

Protocol (the one ivon-opt users know)::

    for x, y in loader:
        for _ in range(opt.mc_samples):
            with opt.sampled_params(train=True):      # parameters now hold θ = μ + σ ⊙ ε
                opt.zero_grad()                        # optional: .grad was cleared on entry
                loss_fn(model(x), y).backward()        # several backward calls accumulate
        opt.step()                                     # uses the average over the samples

or, equivalently, ``opt.step(closure)`` with a closure that computes the loss and calls
``backward()``: it runs ``mc_samples`` sampled contexts and then the update.

* Entering ``sampled_params`` draws ε ~ N(0, I), writes θ = μ + σ ⊙ ε into every parameter
  of the optimizer and, with ``train=True``, clears ``.grad`` so that the sample's gradient
  is kept apart from the others.  Inside, gradients may be accumulated over any number of
  backward calls (gradient accumulation over minibatches).
* θ is written into a buffer laid out like the parameter, and the parameter is pointed
  at it (``p.data``); μ's own storage is not written.  Leaving points the parameter back
  at μ's storage, so the mean is restored exactly, with no copy either way: two passes
  over every weight fewer than saving and restoring a copy (on a CPU, where the step of
  a small network is bound by memory traffic, IVON's step fell from 1.34 to 1.23–1.29
  SGD steps).  The parameter's version counter is bumped on leaving, so a graph built
  on θ cannot be backpropagated afterwards (it would read μ): autograd raises.  With
  ``train=True`` (and no exception inside) the sample's gradient ĝ and, where an optimizer
  needs it, ĝ ⊙ ε are collected; ``.grad`` then holds the average gradient of the
  samples collected so far in this step, and ``step()`` uses that tensor as ĝ (so an
  in-place change of ``.grad`` before ``step()``, e.g. clipping, is honoured). With one
  sample per step, ĝ ⊙ ε is formed by the update itself from that tensor (one pass fewer),
  so such a change reaches the Hessian statistic too; with several, each sample's product
  is formed when it is collected.
* Parameters that received no gradient in a sample are not collected for it; a parameter
  with no sample at all is skipped by ``step()`` and its state is left untouched.

Noise comes from the optimizer's own ``torch.Generator`` (``seed``, or a seed drawn from
torch's global RNG at construction), whose state is part of ``state_dict()``, so a run
that is saved and loaded continues exactly as the uninterrupted run. On the CPU the next
sample's ε is drawn on a worker thread while the current sample's passes run
(:mod:`tacitbayes.optim.noise_prefetch`): the same numbers in the same order;
``optimizer.generator`` always shows the state the on-demand draws would have left.

Sync mode (``sync=True``, for data parallelism in a process group; :mod:`tacitbayes.optim.sync`):
at construction rank 0's parameters and generator state are broadcast, so every rank
draws the same ε; each rank evaluates the same sampled θ on its slice B_r of the global
batch B, and ``step(weight=|B_r|/|B|)`` (default 1/W) first replaces every collected
statistic s (ĝ, Σ ĝ ⊙ ε, the closure's loss) by Σ_r w_r s_r (one flat all-reduce per
dtype), so the step is the one-process step on B and the ranks stay identical. Every
rank must collect the same number of samples per parameter (checked), and call
``sampled_predict`` without a ``generator`` on all ranks or none. Without a process
group ``sync`` changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.batches import Inputs, call_model, move_inputs, n_examples
from tacitbayes.devices import model_device, model_dtype
from tacitbayes.errors import InputError
from tacitbayes.likelihoods import check_likelihood, mc_predictive
from tacitbayes.optim import sync as S
from tacitbayes.optim.noise_prefetch import PrefetchedNoise

__all__ = ["SampledOptimizer", "check_range", "sampled_predict"]


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, raising InputError unless low ≤ value ≤ high (open ends as asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{name} must lie in {left}{low:g}, {high:g}{right}, got {value!r}")
    return value


class SampledOptimizer(torch.optim.Optimizer):
    """Base class: an optimizer of the mean μ of q = N(μ, diag σ²) fed by sampled gradients.

    Subclasses define ``_noise_scale(group, p)`` (σ of parameter p as a tensor factor times
    a scalar), ``_wants_noise_product`` (whether to collect Σ ĝ ⊙ ε) and
    ``_update_group(group, items)`` (one step of the group's sampled parameters from the
    collected ``state["grad_avg"]`` and ``state["geps_sum"]``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        mc_samples: int = 1,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sync: bool = False,
    ) -> None:
        if not isinstance(sync, bool):
            raise InputError(f"sync must be True or False, got {sync!r}")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise InputError(f"mc_samples must be an int ≥ 1, got {mc_samples!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        if isinstance(params, Tensor):
            raise InputError("params must be an iterable of Tensors or of parameter-group dicts")
        try:
            super().__init__(params, defaults)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from exc
        self.mc_samples = mc_samples
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        owned = generator is None
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=device).manual_seed(seed)
        self._noise: PrefetchedNoise | None = None
        self._set_generator(generator, prefetch=owned)
        self.seed = seed
        self.sync = sync
        if sync and S.D.is_distributed():  # one mean and one noise stream on every rank
            params = [p for g in self.param_groups for p in g["params"]]
            S.broadcast_tensors_(params)
            S.broadcast_generator_(generator, device)
            shared = torch.tensor([seed is not None, seed or 0], dtype=torch.long, device=device)
            S.broadcast_tensors_([shared])  # rank 0's seed, for the record
            self.seed = int(shared[1]) if bool(shared[0]) else None
        self._active: list[tuple[Tensor, Tensor, Tensor]] | None = None
        self._work: dict[Tensor, dict[str, Tensor]] = {}  # reusable per-parameter buffers

    # ------------------------------------------------------------------ noise stream

    @property
    def generator(self) -> torch.Generator:
        """The noise generator, in the state on-demand draws would have left (prefetch settled)."""
        if self._noise is not None:
            self._noise.settle()
        return self._generator

    @generator.setter
    def generator(self, generator: torch.Generator) -> None:
        self._set_generator(generator, prefetch=False)  # shared with the caller: on demand

    def _set_generator(self, generator: torch.Generator, prefetch: bool) -> None:
        """Use ``generator``; draw ahead only from a CPU generator of the optimizer's own
        (a generator the caller also holds could be drawn from by both threads at once)."""
        if self._noise is not None:
            self._noise.reset()
        self._generator = generator
        on_cpu = generator.device.type == "cpu" and all(
            p.device.type == "cpu" for g in self.param_groups for p in g["params"]
        )
        self._noise = PrefetchedNoise(generator) if prefetch and on_cpu else None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (noise drawn ahead for the old groups is rewound first)."""
        noise = getattr(self, "_noise", None)  # None while torch's __init__ adds the groups
        if noise is not None:
            noise.reset()
        super().add_param_group(param_group)
        if noise is not None:  # a group on another device turns prefetching off
            self._set_generator(self._generator, prefetch=True)

    # ------------------------------------------------------------------ subclass hooks

    def _noise_scale(self, group: dict[str, Any], p: Tensor) -> tuple[Tensor | None, float]:
        """σ of ``p`` as (tensor factor or None, scalar factor): σ = tensor · scalar."""
        raise NotImplementedError

    def _wants_noise_product(self, group: dict[str, Any]) -> bool:
        return False

    def _update_group(self, group: dict[str, Any], items: list[tuple[Tensor, dict, int]]) -> None:
        """Update the parameters ``items`` = [(p, state, n_samples)] of one group."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling

    def _buffer(
        self, p: Tensor, name: str, layout: torch.memory_format = torch.contiguous_format
    ) -> Tensor:
        """A scratch tensor shaped like ``p``, allocated once and reused (never saved).

        Remade if ``p`` was converted (dtype, device or shape) since. ``layout``
        ``torch.preserve_format`` gives ``p``'s own strides (the buffer a sample θ is
        written into, so that a model compiled for ``p``'s strides sees the same ones).
        """
        work = self._work.setdefault(p, {})
        buf = work.get(name)
        if buf is None or (buf.shape, buf.dtype, buf.device) != (p.shape, p.dtype, p.device):
            buf = work[name] = torch.empty_like(p.detach(), memory_format=layout)
        return buf

    def _standard_normal(self, p: Tensor, generator: torch.Generator) -> Tensor:
        """ε ~ N(0, I) shaped like ``p``, in the reusable buffer "eps"."""
        eps = self._buffer(p, "eps")
        if generator.device == p.device:
            return eps.normal_(generator=generator)
        draw = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
        return eps.copy_(draw)

    @torch.no_grad()
    def posterior_std(self) -> dict[Tensor, Tensor]:
        """σ of every parameter (keyed by the parameter tensor): the std of θ − μ in samples."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                factor, scalar = self._noise_scale(group, p)
                std = torch.full_like(p, scalar) if factor is None else factor * scalar
                out[p] = std
        return out

    @contextmanager
    def sampled_params(
        self, train: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[None]:
        """Put θ = μ + σ ⊙ ε, ε ~ N(0, I), into the parameters; restore μ on exit (collect ĝ if train)."""
        if self._active is not None:
            raise InputError("sampled_params contexts cannot be nested")
        self._form_products()  # a pending ĝ ⊙ ε reads the ε buffers drawn into below
        noise: Iterator[Tensor] | None = None
        if generator is None and self._noise is not None:  # the default stream, drawn ahead
            params = [p for group in self.param_groups for p in group["params"]]
            noise = iter(self._noise.take(params))
        gen = generator if generator is not None else self._generator
        samples: list[tuple[Tensor, Tensor, Tensor]] = []  # (p, θ, ε)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if noise is None:
                        eps = self._standard_normal(p, gen)
                    else:
                        eps = self._work.setdefault(p, {})["eps"] = next(noise)
                    theta = self._buffer(p, "theta", torch.preserve_format)
                    factor, scalar = self._noise_scale(group, p)
                    if factor is None:
                        torch.add(p, eps, alpha=scalar, out=theta)
                    else:
                        torch.addcmul(p, eps, factor, value=scalar, out=theta)
                    samples.append((p, theta, eps))
        # every θ formed: only now are the parameters pointed at them (nothing can fail)
        active: list[tuple[Tensor, Tensor, Tensor]] = []  # (p, μ's storage, ε)
        for p, theta, eps in samples:
            active.append((p, p.data, eps))
            p.data = theta
            if train:
                p.grad = None
        self._active = active
        ok = False
        try:
            yield
            ok = True
        finally:
            self._active = None
            with torch.no_grad():
                for p, mean, _ in active:
                    p.data = mean
                    torch.autograd.graph.increment_version(p)
                if train and ok:
                    self._collect(active)

    def _collect(self, active: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Fold each sampled gradient into state: running mean ĝ (= .grad) and Σ ĝ ⊙ ε."""
        products = {id(g): self._wants_noise_product(g) for g in self.param_groups}
        owner = {id(p): id(g) for g in self.param_groups for p in g["params"]}
        for p, _, eps in active:
            if p.grad is None:
                continue
            g = p.grad.detach()
            if g.is_sparse:
                raise InputError("sparse gradients are not supported")
            state = self.state[p]
            n = state.get("n_collected", 0) + 1
            state["n_collected"] = n
            if products[owner[id(p)]]:
                if n == 1:  # formed by the update itself unless another sample follows
                    state["geps_noise"] = eps
                else:
                    self._form_product(p, state)
                    state["geps_sum"].addcmul_(g, eps)
            if n == 1:
                state["grad_avg"] = g  # owns the sample's gradient tensor (no copy)
            else:
                state["grad_avg"].lerp_(g, 1.0 / n)
            p.grad = state["grad_avg"]

    def _form_product(self, p: Tensor, state: dict[str, Any]) -> None:
        """Σĝε = ĝ ⊙ ε of a single collected sample, into its buffer (before ε is redrawn)."""
        noise = state.pop("geps_noise", None)
        if noise is not None:
            state["geps_sum"] = torch.mul(state["grad_avg"], noise, out=self._buffer(p, "geps"))

    def _form_products(self) -> None:
        """Form every pending single-sample product (the noise buffers are about to change)."""
        for p, state in self.state.items():
            if "geps_noise" in state:
                self._form_product(p, state)

    # ------------------------------------------------------------------ step

    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, *, weight: float | None = None
    ) -> Any:
        """Update μ from the collected samples; with ``closure``, first run ``mc_samples`` sampled passes.

        ``weight``: this rank's share w_r = |B_r|/|B| of the global batch in sync mode
        (default 1/W); ignored without a process group or without sync.
        """
        if self._active is not None:
            raise InputError("step() must be called after leaving sampled_params, not inside it")
        w = S.check_weight(weight)
        loss = None
        if closure is not None:
            total = 0.0
            for _ in range(self.mc_samples):
                with torch.enable_grad(), self.sampled_params(train=True):
                    value = closure()
                total += float(value.detach()) if isinstance(value, Tensor) else float(value or 0.0)
            loss = total / self.mc_samples
        if self.sync and S.D.is_distributed():
            loss = self._all_reduce_collected(w, loss)
        collected = False
        with torch.no_grad():
            for group in self.param_groups:
                items = []
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and state.get("n_collected", 0) > 0:
                        items.append((p, state, state.pop("n_collected")))
                if not items:
                    continue
                self._update_group(group, items)
                for _, state, _ in items:
                    state.pop("grad_avg", None)
                    state.pop("geps_sum", None)
                    state.pop("geps_noise", None)
                collected = True
        if not collected:
            raise InputError(
                "step() found no sampled gradient: compute the loss and call backward() inside "
                "`with optimizer.sampled_params(train=True):` (or pass a closure)"
            )
        return loss

    @torch.no_grad()
    def _all_reduce_collected(self, weight: float, loss: float | None) -> float | None:
        """ĝ ← Σ_r w_r ĝ_r and Σĝε ← Σ_r w_r (Σĝε)_r in place, for every parameter; the weighted loss."""
        self._form_products()
        params = [(g, p) for g in self.param_groups for p in g["params"]]
        counts: list[float] = []
        tensors: list[Tensor] = []
        for group, p in params:
            state = self.state.get(p)
            n = state.get("n_collected", 0) if state else 0
            counts += [float(n), float(n * n)]
            # β₂ = 1 (or VGD) collects no ĝ ⊙ ε: reduce only what the update reads
            names = ("grad_avg", "geps_sum") if self._wants_noise_product(group) else ("grad_avg",)
            for name in names:
                tensors.append(state[name] if n else self._buffer(p, f"sync_{name}").zero_())
        extras = [weight, weight * (loss if loss is not None else 0.0), *counts]
        reduced = S.all_reduce_weighted_(tensors, weight, extras)
        total_weight, world = reduced[0], S.D.world_size()
        if abs(total_weight - 1.0) > 1e-6:
            raise InputError(f"the ranks' weights |B_r|/|B| sum to {total_weight:g}, not 1")
        for i in range(len(params)):
            n_sum, sq_sum = reduced[2 + 2 * i], reduced[3 + 2 * i]
            if world * sq_sum != n_sum * n_sum:  # equal counts iff W Σn² = (Σn)²
                raise InputError(
                    "sync: the ranks collected different numbers of sampled gradients for a "
                    "parameter; every rank must run the same sampled passes before step()"
                )
        return reduced[1] if loss is not None else None

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def sampled_predict(
        self,
        model: nn.Module,
        x: Inputs,
        n_samples: int = 32,
        generator: torch.Generator | None = None,
        *,
        likelihood: str = "classification",
        sigma_noise: float = 0.0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """MC predictive over θ_s = μ + σ ⊙ ε_s: (1/S) Σ_s softmax(f(θ_s, x)), [1 − p̄, p̄] or (mean_s f, var_s f + σ²).

        ``likelihood`` (see :mod:`tacitbayes.likelihoods`): "classification" gives class
        probabilities (len(x), C); "binary" (one logit) gives (len(x), 2) with
        p̄ = (1/S) Σ_s σ(f(θ_s, x)); "regression" gives (mean, variance) of the outputs over
        the samples, each (len(x), O), the variance plus ``sigma_noise``² (the observation
        noise σ is not part of q: pass it; 0 leaves the spread of f). ``model`` runs in eval
        mode and is restored.

        ``x`` is a batch's inputs as the rest of the library takes them
        (:mod:`tacitbayes.batches`): a Tensor (``model(x)``) or a mapping of keyword
        arguments (``model(**x)``, e.g. ``input_ids`` and ``attention_mask``), moved to
        the model's device (floating inputs cast to its dtype). The model may return a
        Tensor, a mapping with ``"logits"`` or an object with ``.logits`` (a Hugging Face
        output).
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be an int ≥ 1, got {n_samples!r}")
        check_likelihood(likelihood)
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        x = move_inputs(_check_inputs(x), model_device(model), model_dtype(model))

        def outputs() -> Iterator[Tensor]:
            for _ in range(n_samples):
                with self.sampled_params(train=False, generator=generator):
                    out = call_model(model, x)
                yield out

        was_training = model.training
        model.eval()
        try:
            return mc_predictive(outputs(), likelihood, sigma_noise=sigma_noise)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state plus the noise generator's state (for exact continuation)."""
        out = super().state_dict()
        out["sampler"] = {"rng_state": self.generator.get_state(), "seed": self.seed}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, including the noise generator's state."""
        state_dict = dict(state_dict)
        sampler = state_dict.pop("sampler", None)
        try:
            super().load_state_dict(state_dict)
        except (KeyError, ValueError) as exc:
            raise InputError(f"cannot load optimizer state: {exc}") from exc
        if self._noise is not None:
            self._noise.reset()
        self._work.clear()
        if sampler is not None:
            self.generator.set_state(sampler["rng_state"])
            self.seed = sampler.get("seed")


def _check_inputs(x: Any) -> Inputs:
    """``x`` if it is a Tensor or a str → Tensor mapping with a shared batch dimension, else InputError."""
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad or not x:
            raise InputError(
                "keyword inputs must map argument names (str) to Tensors"
                + (f"; the entries {bad} do not" if bad else ", got an empty mapping")
            )
        x = dict(x)
    elif not isinstance(x, Tensor):
        raise InputError(
            f"x must be a Tensor or a mapping of keyword inputs to Tensors, got {type(x).__name__}"
        )
    if n_examples(x) < 1:
        raise InputError("x holds no examples (its batch dimension is 0)")
    return x


def sampled_predict(
    optimizer: SampledOptimizer,
    model: nn.Module,
    x: Inputs,
    n_samples: int = 32,
    *,
    likelihood: str = "classification",
    sigma_noise: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """MC predictive of θ_s ~ q of ``optimizer`` for ``likelihood``: (1/S) Σ_s softmax(f(θ_s, x)) etc.; see its method."""
    if not isinstance(optimizer, SampledOptimizer):
        raise InputError(f"need an IVON or VariationalGD optimizer, got {type(optimizer).__name__}")
    return optimizer.sampled_predict(
        model, x, n_samples, likelihood=likelihood, sigma_noise=sigma_noise
    )
