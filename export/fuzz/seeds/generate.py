"""Writes the fuzzer's seed files: the smallest GPT and ResNet the recipes
make, exported with quantized weights, WDM slot orders and crosstalk
compensation, so that each seed reaches every op and every core attribute
in a few kilobytes (small inputs mutate and run fast).

    python export/fuzz/seeds/generate.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lumijax import convert, layers, wdm
from lumijax.exporter import LuminaExporter


def main(out: Path) -> None:
    gpt = convert.recipe("gpt2", vocab_size=8, n_positions=4, n_embd=4, n_layer=1, n_head=2, seed=1, weight_bits=4)
    resnet = convert.recipe("resnet", layers=(1, 1, 1, 1), width=2, num_classes=3, seed=2, weight_bits=4)
    inputs = {"gpt": np.array([[1, 2, 3]], np.int32), "resnet": np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)}
    for name, model in (("gpt", gpt), ("resnet", resnet)):
        layers.set_mode(model, "expected")
        hardware = model.factory.hardware.replace(crosstalk_suppression_db=20.0)
        LuminaExporter(hardware, wdm.WDMPlanner(hardware)).export(model, out / f"{name}.lmn", [inputs[name]])


if __name__ == "__main__":
    main(Path(__file__).parent)
