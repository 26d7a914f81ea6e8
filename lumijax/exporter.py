"""``LuminaExporter``: a photonic model → a ``.lmn`` file the Rust runtime runs.

It plans the wavelengths (when given a :class:`~lumijax.wdm.WDMPlanner`),
puts the plan on the model's layers, builds the Photonic Execution Graph
(:mod:`lumijax.peg`) and writes it (:mod:`lumijax.lmn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumijax import hardware as hw
from lumijax import layers, lmn, peg, wdm


class LuminaExporter:
    """Exports converted GPT and ResNet models.

    Args:
      hardware: the hardware the file describes; every core of an exported
        model must have its WDM geometry (channels, FSR).
      planner: plans and applies the wavelengths before export (the plan is
        written to the file's ``wdm`` field).
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

    def graph(self, model, example_inputs: Sequence[Any]) -> peg.PEG:
        """The PEG of ``model`` (planned first when there is a planner)."""
        self._check(model)
        plan = None
        if self.planner is not None:
            plan = self.planner.optimize_allocation(model)
            plan.apply(model)
        return peg.build(model, example_inputs, hardware=self.hardware, wdm=plan.to_dict() if plan else None)

    def export(self, model, path: str | Path, example_inputs: Sequence[Any]) -> Path:
        """Writes ``model`` for inputs shaped like ``example_inputs`` to ``path``."""
        return lmn.write(self.graph(model, example_inputs), path)
