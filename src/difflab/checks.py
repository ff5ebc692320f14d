"""Argument checks shared by the whole library, each a one-line ``ValueError`` that names the bad value
and what is allowed.

Every public function and constructor checks its numbers here rather than with a copy of its own, so
that the same mistake reads the same everywhere (``steps must be an integer >= 1, got 0``).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (``int`` or ``float``, not ``bool``)."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_number(name: str, value: Any, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a float when it is a finite number (``>= low``, or ``> low`` with ``strict``)."""
    if not is_number(value) or not math.isfinite(value) or (
        low is not None and (value <= low if strict else value < low)
    ):
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, low: int = 1) -> int:
    """``value`` when it is an integer ``>= low`` (not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_nonnegative(**options: float) -> None:
    """A clear ``ValueError`` for any option that must be a number ``>= 0``."""
    for name, value in options.items():
        if not is_number(value) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def check_positive(**options: float) -> None:
    """A clear ``ValueError`` for any option that must be a number ``> 0``."""
    for name, value in options.items():
        if not is_number(value) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")


def check_count(**options: int) -> None:
    """A clear ``ValueError`` for any option that must be an integer ``>= 1``."""
    for name, value in options.items():
        check_int(name, value, 1)


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """A one-line ``ValueError`` naming ``value`` and what ``name`` allows."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, allowed))}")


def check_order(order: Any, allowed: tuple[int, ...]) -> None:
    """A one-line ``ValueError`` unless ``order`` is one of the integers ``allowed``."""
    if isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(str, allowed))}, got {order!r}")


def shape_of(x) -> object:
    """``x``'s shape as a tuple for a tensor, else its type's name (for error messages)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


__all__ = [
    "check_choice",
    "check_count",
    "check_int",
    "check_nonnegative",
    "check_number",
    "check_order",
    "check_positive",
    "is_number",
    "shape_of",
]
