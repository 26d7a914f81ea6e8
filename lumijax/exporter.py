"""``LuminaExporter``: a photonic model → a ``.lmn`` file the Rust runtime runs.

It builds the Photonic Execution Graph (:mod:`lumijax.peg`) of a copy of the
model with a wavelength plan on its layers (one given, or one its
:class:`~lumijax.wdm.WDMPlanner` makes) and writes it (:mod:`lumijax.lmn`).
The model itself is left as it was: to run in Python what the file runs,
put the same plan on it (:meth:`lumijax.wdm.WDMMap.apply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from lumijax import hardware as hw
from lumijax import layers, lmn, peg, wdm


class LuminaExporter:
    """Exports converted GPT and ResNet models.

    Args:
      hardware: the hardware the file describes; every core of an exported
        model must have its WDM geometry (channels, FSR).
      planner: plans the wavelengths of a model exported without a plan
        (the plan is written to the file's ``wdm`` field).
    """

    def __init__(self, hardware: hw.HardwareConfig | None = None, planner: wdm.WDMPlanner | None = None):
        self.hardware = hardware or hw.HardwareConfig()
        self.planner = planner

    def _check(self, model) -> None:
        for core in layers.photonic_cores(model):
            if (core.hardware.num_channels, core.hardware.fsr_nm) != (self.hardware.num_channels, self.hardware.fsr_nm):
                raise peg.ExportError(
                    f"a core of the model has {core.hardware.num_channels} channels over {core.hardware.fsr_nm} nm, "
                    f"the exporter's hardware {self.hardware.num_channels} over {self.hardware.fsr_nm} nm"
                )

    def graph(self, model, example_inputs: Sequence[Any], plan: wdm.WDMMap | None = None) -> peg.PEG:
        """The PEG of ``model`` with ``plan`` on its layers (by default the
        planner's plan, if there is a planner); ``model`` is not changed."""
        self._check(model)
        if plan is None and self.planner is not None:
            plan = self.planner.optimize_allocation(model)
        model = nnx.clone(model)
        if plan is not None:
            plan.apply(model)
        return peg.build(model, example_inputs, hardware=self.hardware, wdm=plan.to_dict() if plan else None)

    def export(self, model, path: str | Path, example_inputs: Sequence[Any], plan: wdm.WDMMap | None = None) -> Path:
        """Writes ``model`` (with ``plan``, as :meth:`graph`) for inputs
        shaped like ``example_inputs`` to ``path``."""
        return lmn.write(self.graph(model, example_inputs, plan), path)
