"""Checkpoints that never run code: tensors and plain values only, with a format version.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file holding any
other object (a pickle whose ``__reduce__`` would call a function, a custom class) is
refused with an :class:`~tacitbayes.errors.InputError` before anything in it runs.
The files written here hold only tensors, dicts, lists, tuples, numbers, strings, bools
and None, so no allow-list of extra types is needed.

A MAP training checkpoint records ``format``, ``version``, the settings a resumed run
must share (:data:`RESUME_SETTINGS`) and the shape of every entry of the model's state;
:func:`check_resumable` names the first one that differs.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError

__all__ = [
    "FORMAT",
    "RESUME_SETTINGS",
    "VERSION",
    "check_resumable",
    "check_state_fits",
    "load_checkpoint",
    "model_weights",
    "state_shapes",
    "training_checkpoint",
]

FORMAT = "tacitbayes-map-training"
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


def _resume_settings(settings: dict[str, Any]) -> dict[str, Any]:
    kept = {k: settings[k] for k in RESUME_SETTINGS if k in settings}
    if kept.get("optimizer") != "sgd":
        kept.pop("momentum", None)  # Adam ignores it
    return kept


def training_checkpoint(
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
    settings: dict[str, Any],
    epoch: int,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """The checkpoint of a MAP training run after ``epoch`` epochs (CPU tensors expected)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "model": model_state,
        "optimizer": optimizer_state,
        "shapes": state_shapes(model_state),
        "settings": _resume_settings(settings),
        "config": dict(settings),
        "history": [dict(h) for h in history],
    }


def check_state_fits(state: Any, model: nn.Module, path: str | Path) -> dict[str, Tensor]:
    """``state`` as a state dict of ``model``; InputError naming a missing, extra or mis-shaped entry."""
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} holds no model weights (a dict of tensors)")
    want = state_shapes(model.state_dict())
    have = state_shapes(state)
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown entry {extra[0]!r}"
        raise InputError(
            f"checkpoint {path} does not fit this model: it {what} "
            "(another --model, --width or --depth?)"
        )
    for name, shape in want.items():
        if have[name] != shape:
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
    state: Any, model: nn.Module, settings: dict[str, Any], path: str | Path
) -> None:
    """Raise InputError unless ``state`` is a MAP training checkpoint this run can continue."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(
            f"cannot resume from {path}: not a tacitbayes training checkpoint (or written by a "
            "version without a format tag); train from scratch without --resume"
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
    now = _resume_settings(settings)
    for key in RESUME_SETTINGS:
        if key in now and saved.get(key) != now[key]:
            raise InputError(
                f"cannot resume from {path}: {key} was {saved.get(key)!r} there but is "
                f"{now[key]!r} now; resume with the same {key} or train from scratch"
            )
    check_state_fits(state.get("model"), model, path)
    if not isinstance(state.get("optimizer"), dict):
        raise InputError(f"cannot resume from {path}: the checkpoint has no optimizer state")
