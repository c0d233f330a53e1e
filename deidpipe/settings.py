"""Limits a run can set from the environment (for a whole batch, its worker processes included)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def positive_env(name: str, default: T, cast: Callable[[str], T]) -> T:
    """``$name`` as a positive number, else ``default`` (unset, empty, not a number, zero or negative: a bad
    setting must not turn a bound off)."""
    raw = os.environ.get(name, "")
    try:
        value = cast(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default
