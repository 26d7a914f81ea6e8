"""How close a converted model's numbers are to a reference's."""

from __future__ import annotations

import numpy as np


def relative_error(ours, reference) -> float:
    """``max|ours − reference| / max|reference|``, in float64."""
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))
