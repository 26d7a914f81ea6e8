"""Timing, parity and reporting shared by the benchmarks (and the tests' parity checks): one process, same threads."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def relative_error(ours, reference) -> float:
    """``max|ours − reference| / max|reference|``, in float64."""
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))


def compare(
    contenders: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2, settle_s: float = 1.0
) -> dict[str, float]:
    """Median wall time in seconds of each contender (each call must block
    until its work is done).

    Each contender runs as a block of calls, its steady state in a loop,
    after a pause: the thread pools of the library that ran before (OpenMP,
    XLA's and rayon's workers spin for a while after work) have gone to sleep
    and do not compete for the cores.
    """
    times: dict[str, float] = {}
    for name, fn in contenders.items():
        time.sleep(settle_s)
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
    return times


def machine() -> dict:
    """What the numbers were measured on."""
    from lumijax import native

    model = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = native.build_info()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel_threads": info["threads"],
        "target_features": info["target_features"],
        "python": platform.python_version(),
    }


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
