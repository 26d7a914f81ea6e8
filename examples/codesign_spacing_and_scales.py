"""Co-design of the WDM channel spacing and the quantization scales.

The digits ResNet-10 (see finetune_hardware_aware.py) starts on the fixed
0.8 nm grid with 4-bit weights and noisy detectors, its rings programmed
without crosstalk compensation: the neighbours' leakage reaches the
products, so a tighter grid costs accuracy. ``lumijax.tune.codesign``
trains the weights, their LSQ scales and one channel spacing together, with
a penalty on the optical band the grid occupies. A sweep of the test
accuracy against spacing, for the converted and the co-designed model,
then finds the smallest spacing that keeps the accuracy within 1 point of
ideal, and the band that saves against the 0.8 nm grid.

    python examples/codesign_spacing_and_scales.py [--out out/codesign] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from rich.console import Console
from rich.table import Table

from lumijax import convert, layers, tune, zoo
from lumijax import hardware as hw

FIXED_GRID_NM = 0.8
HARDWARE = hw.HardwareConfig(channel_spacing_nm=FIXED_GRID_NM)
WEIGHT_BITS = 4
SPACINGS_NM = np.round(np.arange(0.10, 0.81, 0.05), 3)


def sweep(model, hardware: hw.HardwareConfig, test: tune.Data, draws: int = 3) -> np.ndarray:
    """Test accuracy at each spacing of :data:`SPACINGS_NM`, averaged over
    ``draws`` noise draws."""
    accuracies = []
    for spacing in SPACINGS_NM:
        tune.apply_hardware(model, hardware.replace(channel_spacing_nm=float(spacing)), "noisy")
        accuracies.append(tune.evaluate(model, test, draws=draws)[1])
    return np.array(accuracies)


def smallest_within(accuracies: np.ndarray, floor: float) -> float | None:
    """The smallest spacing from which on every wider one reaches ``floor``."""
    ok = accuracies >= floor
    if not ok[-1]:
        return None
    first = len(ok) - np.argmin(ok[::-1]) if not ok.all() else 0
    return float(SPACINGS_NM[first])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/codesign", help="folder for the checkpoint, plots and results")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--band-weight", type=float, default=0.1)
    args = parser.parse_args()
    console, out = Console(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = zoo.digits()
    test = (split.x_test, split.y_test)

    torch_model = zoo.cached_digits_resnet(out / "digits_resnet10.pt", (1, 1, 1, 1), console=console)
    ideal = tune.evaluate(convert.from_torch_recipe(torch_model), test)[1]
    converted = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode="noisy", weight_bits=WEIGHT_BITS)
    layers.set_compensation(converted, False)
    with console.status("sweeping the converted model over spacing"):
        before = sweep(converted, HARDWARE, test)

    model = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode="noisy", weight_bits=WEIGHT_BITS)
    layers.set_compensation(model, False)
    model, chosen, history = tune.codesign(model, (split.x_train, split.y_train), HARDWARE, optax.adam(1e-3), args.steps,
                                           band_weight=args.band_weight)
    with console.status("sweeping the co-designed model over spacing"):
        after = sweep(model, HARDWARE, test)

    floor = ideal - 0.01
    smallest = {name: smallest_within(acc, floor) for name, acc in (("converted", before), ("co-designed", after))}
    table = Table(title=f"digits ResNet-10, {WEIGHT_BITS}-bit weights, {HARDWARE.num_channels} channels, Q = {HARDWARE.quality_factor:g}, "
                        "uncompensated; "
                        f"ideal accuracy {ideal:.2%}")
    for column in ("model", "smallest spacing within 1 point of ideal", "band N·Δ", "band saved vs 0.8 nm grid"):
        table.add_column(column)
    for name, spacing in smallest.items():
        if spacing is None:
            table.add_row(name, "none in the sweep", "", "")
        else:
            band = HARDWARE.num_channels * spacing
            table.add_row(name, f"{spacing:.2f} nm", f"{band:.1f} nm", f"{1 - spacing / FIXED_GRID_NM:.0%}")
    table.add_row("co-design's own choice", f"{float(chosen.channel_spacing_nm):.3f} nm",
                  f"{HARDWARE.num_channels * float(chosen.channel_spacing_nm):.1f} nm",
                  f"{1 - float(chosen.channel_spacing_nm) / FIXED_GRID_NM:.0%}")
    console.print(table)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(SPACINGS_NM, 100 * before, "o-", label="converted")
    ax.plot(SPACINGS_NM, 100 * after, "s-", label="co-designed")
    ax.axhline(100 * ideal, color="k", lw=0.8, label="ideal")
    ax.axhline(100 * floor, color="k", lw=0.8, ls="--", label="ideal − 1 point")
    ax.axvline(float(chosen.channel_spacing_nm), color="C1", lw=0.8, ls=":", label="co-design's spacing")
    ax.set(xlabel="channel spacing (nm)", ylabel="test accuracy (%)", title="accuracy against WDM channel spacing")
    ax.legend()
    fig.tight_layout()
    figure = out / "accuracy_vs_spacing.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    history.plot(out / "codesign_history.png")
    results = {"ideal": ideal, "spacings_nm": SPACINGS_NM.tolist(), "converted": before.tolist(), "codesigned": after.tolist(),
               "smallest_within_1_point_nm": smallest, "chosen_spacing_nm": float(chosen.channel_spacing_nm),
               "band_weight": args.band_weight, "steps": args.steps}
    (out / "codesign.json").write_text(json.dumps(results, indent=2))
    console.print(f"plots {figure} and {out / 'codesign_history.png'}, numbers in {out / 'codesign.json'}")


if __name__ == "__main__":
    main()
