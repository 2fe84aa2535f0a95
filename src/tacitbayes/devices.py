"""Devices: check a device name, and move batches and data sets onto a device.

A device is named ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. :func:`check_device` also
checks that this machine has it, so a run can refuse a missing GPU before it starts.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from tacitbayes.batches import move_inputs
from tacitbayes.device_names import DEVICE_NAMES, check_device_name
from tacitbayes.errors import InputError

__all__ = [
    "DEVICE_NAMES",
    "check_device",
    "dataset_to",
    "model_device",
    "model_dtype",
    "parse_device",
    "to_cpu",
]


def parse_device(device: str | torch.device) -> torch.device:
    """The torch.device named ``device`` (cpu, cuda, cuda:N or mps); InputError for any other."""
    name = str(device) if isinstance(device, torch.device) else device
    return torch.device(check_device_name(name, shown=device))


def check_device(device: str | torch.device) -> torch.device:
    """The torch.device ``device`` after checking that this machine has it; InputError otherwise."""
    dev = parse_device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "no CUDA device found"
            if torch.version.cuda is None:
                why = f"torch {torch.__version__} was built without CUDA"
            raise InputError(f"device {str(dev)!r} is not available: {why}; use cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"device {str(dev)!r} is not available: {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' is not available on this machine; use cpu")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu for a model with neither)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (torch's default dtype if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def dataset_to(
    dataset: TensorDataset, device: str | torch.device, dtype: torch.dtype | None = None
) -> TensorDataset:
    """``dataset`` with its tensors on ``device``, floating ones cast to ``dtype``; itself if none moves."""
    moved = tuple(move_inputs(t, device, dtype) for t in dataset.tensors)
    if all(a is b for a, b in zip(moved, dataset.tensors, strict=True)):
        return dataset
    return TensorDataset(*moved)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (through dicts, lists and tuples) moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
