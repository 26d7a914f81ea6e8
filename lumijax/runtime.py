"""Run ``.lmn`` files from Python on the pure-Rust runtime.

The file is memory-mapped and validated by the Rust reader
(``export/``), and runs on the native kernels with the GIL released::

    model = lumijax.runtime.load("model.lmn")
    (logits,) = model.run([tokens], mode="noisy", seed=1)

The same runtime backs the ``lmn`` command (``lmn run``, ``lmn inspect``,
``lmn bench``), which needs no Python at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lumijax import lmn
from lumijax.native import load as _native

MODES = ("ideal", "expected", "noisy")
_DTYPES = {"f32": np.float32, "i32": np.int32}


class Runtime:
    """A validated ``.lmn`` model.

    Attributes:
      inputs, outputs: ``[(name, dtype, shape)]`` of the graph.
      cost: ``{"ideal": {"memory_bytes", "work"}, "hardware": {...}}``, the
        peak memory (bytes) and the work (multiply-adds) of one run in ideal
        mode and in the hardware modes, from the declared shapes
        (FORMAT.md §6.2).
    """

    def __init__(self, native) -> None:
        self._native = native
        self.inputs = [(n, d, tuple(s)) for n, d, s in native.inputs()]
        self.outputs = [(n, d, tuple(s)) for n, d, s in native.outputs()]
        self.cost = {mode: dict(figures) for mode, figures in native.cost()}

    def run(self, inputs: Sequence[np.ndarray], mode: str = "ideal", seed: int = 0) -> list[np.ndarray]:
        """The graph's outputs for ``inputs`` (in input order).

        Args:
          inputs: arrays of the input shapes; floats are taken as float32,
            integers as int32 (ids beyond int32 are an error).
          mode: ``"ideal"``, ``"expected"`` or ``"noisy"`` (FORMAT.md §7.2).
          seed: the noise seed of ``"noisy"`` (same seed, same outputs).
        """
        if mode not in MODES:
            raise ValueError(f"mode = {mode!r}: use one of {MODES}")
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs ({[n for n, _, _ in self.inputs]}), got {len(inputs)}")
        arrays = []
        for (name, dtype, shape), value in zip(self.inputs, inputs):
            value = np.asarray(value)
            if dtype == "i32" and value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
                raise ValueError(f"input {name!r}: values do not fit int32")
            arrays.append(np.ascontiguousarray(value, dtype=_DTYPES[dtype]))
        return self._native.run(arrays, mode, int(seed))


def load(path: str | os.PathLike, *, max_memory_bytes: int | None = None, max_work: int | None = None) -> Runtime:
    """Memory-maps and validates ``path``; raises :class:`lumijax.lmn.LmnError`.

    Args:
      max_memory_bytes: the most memory a run may hold (weights, values and
        scratch); ``None``: 4 GiB. A file whose ideal-mode run needs more is
        refused here, a run in a hardware mode that needs more when it starts.
      max_work: the most multiply-adds a run may take; ``None``: 2⁴⁰.
    """
    try:
        return Runtime(_native().LmnRuntime.open(os.fspath(path), max_memory_bytes, max_work))
    except ValueError as err:
        raise lmn.LmnError(str(err)) from None


def from_bytes(blob: bytes, *, max_memory_bytes: int | None = None, max_work: int | None = None) -> Runtime:
    """Validates an ``.lmn`` file held in memory, with the caps of :func:`load`."""
    try:
        return Runtime(_native().LmnRuntime.from_bytes(blob, max_memory_bytes, max_work))
    except ValueError as err:
        raise lmn.LmnError(str(err)) from None


def lmn_binary() -> Path | None:
    """The ``lmn`` command: ``$LUMIJAX_LMN``, the workspace's release build, or on ``PATH``."""
    if os.environ.get("LUMIJAX_LMN"):
        return Path(os.environ["LUMIJAX_LMN"])
    built = Path(__file__).resolve().parent.parent / "target" / "release" / "lmn"
    if built.is_file():
        return built
    found = shutil.which("lmn")
    return Path(found) if found else None
