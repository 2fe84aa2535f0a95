"""Device names as strings: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked without importing torch.

The command line checks a ``--device`` name with :func:`check_device_name` while it parses
(so ``--help`` and usage errors never load torch); :func:`tacitbayes.devices.check_device`
later checks that this machine has the device.
"""

from __future__ import annotations

import re

from tacitbayes.errors import InputError

__all__ = ["DEVICE_NAMES", "DEVICE_PATTERN", "check_device_name"]

DEVICE_NAMES = ("cpu", "cuda", "cuda:N", "mps")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_device_name(name: object, shown: object | None = None) -> str:
    """``name`` if it is cpu, cuda, cuda:N or mps; InputError naming ``shown`` (or ``name``) otherwise."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        shown = name if shown is None else shown
        raise InputError(f"unknown device {shown!r}; available: {', '.join(DEVICE_NAMES)}")
    return name
