"""Checkpoints that never run code: tensors and plain values only, with a format version.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file holding any
other object (a pickle whose ``__reduce__`` would call a function, a custom class) is
refused with an :class:`~tacitbayes.errors.InputError` before anything in it runs.
The files written here hold only tensors, dicts, lists, tuples, numbers, strings, bools
and None, so no allow-list of extra types is needed.

A training checkpoint (MAP, IBVI or IVON: :data:`FORMATS`) records ``format``,
``version``, the settings a resumed run must share (:data:`RESUME_SETTINGS` for MAP; each
training loop names its own) and the shape of every entry of the model's state;
:func:`check_resumable` names the first one that differs. :class:`EpochCheckpoints` is
the one implementation of "save after every epoch, continue from the last save" that
every training loop uses.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes import distributed as D
from tacitbayes.devices import to_cpu
from tacitbayes.errors import InputError
from tacitbayes.io import save_torch

__all__ = [
    "FORMAT",
    "FORMATS",
    "EpochCheckpoints",
    "RESUME_SETTINGS",
    "VERSION",
    "check_resumable",
    "check_state_fits",
    "load_checkpoint",
    "model_weights",
    "state_shapes",
    "training_checkpoint",
]

FORMATS = {
    "map": "tacitbayes-map-training",
    "ibvi": "tacitbayes-ibvi-training",
    "ivon": "tacitbayes-ivon-training",
}
FORMAT = FORMATS["map"]
EXTRA_STATE = "_extra_state"  # the state_dict key of nn.Module.get_extra_state()
VERSION = 1
# Settings that define the optimisation path: a resumed run must use the same ones.
# ``epochs`` may change (training continues to the new count); ``momentum`` counts for SGD.
RESUME_SETTINGS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "loss",
    "schedule",
    "seed",
)
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    UnicodeDecodeError,
    ImportError,
)


def _refusal(path: Path, exc: pickle.UnpicklingError) -> InputError:
    """The one-line error of a file that the weights-only unpickler refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("Unsupported")), "")
    reason = f" ({detail})" if detail else ""
    return InputError(
        f"checkpoint {path} was refused: it holds objects other than tensors and plain "
        f"values, and loading them could run code{reason}; use a checkpoint written by "
        "tacitbayes or a plain state_dict"
    )


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True``; InputError if it cannot be."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the pickle-protocol notice: one line only
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise _refusal(path, exc) from exc
        raise InputError(f"checkpoint {path} is not a PyTorch checkpoint ({exc})") from exc
    except OSError as exc:
        raise InputError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except _LOAD_ERRORS as exc:
        raise InputError(
            f"checkpoint {path} is not a PyTorch checkpoint or is damaged; give a file "
            "written by torch.save (a tacitbayes checkpoint or a state_dict)"
        ) from exc


def state_shapes(state: dict[str, Tensor]) -> dict[str, list[int]]:
    """{name: shape} of every tensor of a state dict."""
    return {k: list(v.shape) for k, v in state.items() if isinstance(v, Tensor)}


def _resume_settings(settings: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    kept = {k: settings[k] for k in keys if k in settings}
    if kept.get("optimizer") not in (None, "sgd"):
        kept.pop("momentum", None)  # Adam ignores it
    return kept


def _format(kind: str) -> str:
    if kind not in FORMATS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(FORMATS)}")
    return FORMATS[kind]


def training_checkpoint(
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
    settings: dict[str, Any],
    epoch: int,
    history: list[dict[str, float]],
    kind: str = "map",
    resume_keys: Sequence[str] = RESUME_SETTINGS,
) -> dict[str, Any]:
    """The checkpoint of a ``kind`` training run after ``epoch`` epochs (CPU tensors expected)."""
    return {
        "format": _format(kind),
        "version": VERSION,
        "epoch": int(epoch),
        "model": model_state,
        "optimizer": optimizer_state,
        "shapes": state_shapes(model_state),
        "settings": _resume_settings(settings, resume_keys),
        "config": dict(settings),
        "history": [dict(h) for h in history],
    }


def check_state_fits(state: Any, model: nn.Module, path: str | Path) -> dict[str, Tensor]:
    """``state`` as a state dict of ``model``; InputError naming a missing, extra or mis-shaped entry.

    Entries are tensors, except a module's ``_extra_state`` (plain values, e.g. the
    structure of a variational model), which ``load_state_dict`` checks itself.
    """
    if not isinstance(state, dict) or not all(
        isinstance(v, Tensor) or str(k).endswith(EXTRA_STATE) for k, v in state.items()
    ):
        raise InputError(f"checkpoint {path} holds no model weights (a dict of tensors)")
    reference = model.state_dict()
    want = state_shapes(reference)
    have = state_shapes(state)
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown entry {extra[0]!r}"
        raise InputError(
            f"checkpoint {path} does not fit this model: it {what} "
            "(another --model, --width or --depth?)"
        )
    for name, shape in want.items():
        if have.get(name) != shape:
            raise InputError(
                f"checkpoint {path} does not fit this model: {name!r} has shape "
                f"{have[name]} there but {shape} here (another --width or --depth?)"
            )
    return state


def model_weights(state: Any, model: nn.Module, path: str | Path) -> dict[str, Tensor]:
    """The model weights of a training checkpoint or of a plain state dict, checked against ``model``."""
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    return check_state_fits(state, model, path)


def check_resumable(
    state: Any,
    model: nn.Module,
    settings: dict[str, Any],
    path: str | Path,
    kind: str = "map",
    resume_keys: Sequence[str] = RESUME_SETTINGS,
) -> None:
    """Raise InputError unless ``state`` is a ``kind`` training checkpoint this run can continue."""
    if not isinstance(state, dict) or state.get("format") != _format(kind):
        found = state.get("format") if isinstance(state, dict) else None
        what = (
            f"it holds a {found!r} checkpoint"
            if isinstance(found, str)
            else "not a tacitbayes training checkpoint (or written by a version without a "
            "format tag)"
        )
        raise InputError(
            f"cannot resume {kind} training from {path}: {what}; train from scratch without "
            "--resume"
        )
    version = state.get("version")
    if version != VERSION:
        raise InputError(
            f"cannot resume from {path}: checkpoint format version {version}, this tacitbayes "
            f"reads version {VERSION}; train from scratch without --resume"
        )
    saved = state.get("settings")
    if not isinstance(saved, dict) or not isinstance(state.get("epoch"), int):
        raise InputError(f"cannot resume from {path}: the checkpoint is incomplete")
    now = _resume_settings(settings, resume_keys)
    for key in resume_keys:
        if key in now and saved.get(key) != now[key]:
            raise InputError(
                f"cannot resume from {path}: {key} was {saved.get(key)!r} there but is "
                f"{now[key]!r} now; resume with the same {key} or train from scratch"
            )
    check_state_fits(state.get("model"), model, path)
    if not isinstance(state.get("optimizer"), dict):
        raise InputError(f"cannot resume from {path}: the checkpoint has no optimizer state")


class EpochCheckpoints:
    """Save a training loop after every epoch to one file, and continue it from that file.

    ``settings`` are the loop's settings (recorded whole; ``resume_keys`` must match to
    resume). The model's state and the optimizer's ``state_dict`` (an optimizer whose
    noise comes from its own generator saves that too) are written atomically as CPU
    tensors by rank 0; every rank reads them on resume and all fail together. A loop
    that reseeds its randomness from (seed, epoch) then continues bit for bit.
    """

    def __init__(
        self,
        path: str | Path | None,
        kind: str,
        settings: dict[str, Any],
        resume_keys: Sequence[str] = RESUME_SETTINGS,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.kind, self.settings, self.resume_keys = kind, dict(settings), tuple(resume_keys)
        _format(kind)

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[int, list[dict[str, float]]]:
        """Load the file into ``model`` and ``optimizer``; (epochs done, history so far)."""
        path = self.path
        if path is None or not D.all_ranks_ok(path.is_file()):
            raise InputError(
                f"cannot resume: checkpoint {path} not found; train without resume first"
            )
        error: Exception | None = None
        state: dict[str, Any] = {}
        try:
            state = load_checkpoint(path)
            check_resumable(state, model, self.settings, path, self.kind, self.resume_keys)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except InputError as exc:
            error = exc
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            error = InputError(f"cannot resume from checkpoint {path}: {exc}")
        if not D.all_ranks_ok(error is None):  # every rank reads it; all fail together
            if error is None:
                error = InputError(
                    f"cannot resume from checkpoint {path}: unreadable on another rank"
                )
            raise error
        return int(state["epoch"]), [dict(h) for h in state.get("history", [])]

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        history: list[dict[str, float]],
    ) -> None:
        """Write the state after ``epoch`` epochs (no-op without a path; rank 0 only)."""
        if self.path is None:
            return
        state = training_checkpoint(
            to_cpu(model.state_dict()),
            to_cpu(optimizer.state_dict()),
            self.settings,
            epoch,
            history,
            self.kind,
            self.resume_keys,
        )
        save_torch(state, self.path)
