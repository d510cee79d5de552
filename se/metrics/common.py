"""Shared pieces of the metric families: the Undefined signal (resampling: se.resample)."""

from __future__ import annotations

import numpy as np


class Undefined(Exception):
    """A metric has no value for this pair; the message says why (e.g. silent reference).

    The scorer writes NaN for the metric, counts it and records the message; it is never an
    error of the whole run.
    """


def finite_or_undefined(value: float, what: str) -> float:
    """Return ``value`` as float, or raise Undefined if it is NaN or infinite."""
    value = float(value)
    if not np.isfinite(value):
        raise Undefined(f"{what} is {value}")
    return value
