"""Settings checks every sub-command shares: one message for each kind of bad value.

Each raises :class:`tacitbayes.errors.InputError` naming the setting, the value and what
it must be; the CLI turns that into one line and exit status 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tacitbayes.errors import InputError

__all__ = ["check_choice", "check_fraction", "check_positive_ints", "check_positive_numbers"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> None:
    """``value`` must be one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise InputError(f"unknown {what} {value!r}; available: {', '.join(allowed)}")


def check_positive_ints(settings: Any, *names: str, optional: bool = False) -> None:
    """Each ``settings.<name>`` must be an integer ≥ 1 (or None when ``optional``)."""
    for name in names:
        value = getattr(settings, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer ≥ 1, got {value!r}")


def check_positive_numbers(settings: Any, *names: str, zero_ok: bool = False) -> None:
    """Each ``settings.<name>`` must be a finite number > 0 (≥ 0 if ``zero_ok``), or a non-empty sequence of them."""
    for name in names:
        value = getattr(settings, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        low_ok = (lambda v: v >= 0) if zero_ok else (lambda v: v > 0)
        if not values or not all(_is_number(v) and low_ok(v) and v < math.inf for v in values):
            kind = "non-negative" if zero_ok else "positive"
            raise InputError(f"{name} must be finite {kind} numbers, got {value!r}")


def check_fraction(name: str, value: Any, closed_high: bool = True) -> None:
    """``value`` must lie in (0, 1] (or (0, 1) when not ``closed_high``)."""
    ok = _is_number(value) and 0 < value and (value <= 1 if closed_high else value < 1)
    if not ok:
        raise InputError(f"{name} must lie in (0, 1{']' if closed_high else ')'}, got {value!r}")
