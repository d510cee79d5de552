"""High-quality resampling (soxr 'VHQ'), used in data preparation and at enhancement I/O only.

Training never resamples: data directories are prepared at the network's rate.
"""

from __future__ import annotations

import numpy as np
import soxr


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return np.asarray(x)
    y = soxr.resample(np.asarray(x, dtype=np.float64), rate_in, rate_out, quality="VHQ")
    return y
