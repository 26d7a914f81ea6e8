"""Hardware-aware fine-tuning of a small ResNet on scikit-learn's digits.

A torchvision ResNet-10 (one basic block per stage, small-image stem) is
trained in torch, converted, and put on a 4-bit photonic core: 4-bit ring
weights, 4-bit DACs and ADCs, detector noise, and WDM crosstalk at 0.4 nm
channel spacing (linearly compensated), its converter ranges calibrated on
the training images. Fine-tuning under that hardware model, with fresh
noise every step, the converter ranges held where calibration put them
(as the exported file keeps them) and the float model's outputs distilled
next to the labels, wins back the accuracy the hardware cost. Noisy
accuracies are means over several noise draws of the test set.

Fine-tuning is also more training: as a control, the float model is
trained alike (same steps, optimizer and batches) and its accuracy is
reported next to the ideal one, so the share recovered can be read against
either.

    python examples/finetune_hardware_aware.py [--out out/finetune] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lumijax import convert, tune, zoo
from lumijax import hardware as hw

HARDWARE = hw.HardwareConfig(channel_spacing_nm=0.4, dac_bits=4, adc_bits=4)
WEIGHT_BITS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/finetune", help="folder for the checkpoint, plot and results")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak of the warm-up/cosine Adam schedule")
    parser.add_argument("--draws", type=int, default=5, help="noise draws averaged per noisy accuracy")
    args = parser.parse_args()
    console, out = Console(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = zoo.digits()
    train, test = (split.x_train, split.y_train), (split.x_test, split.y_test)

    torch_model = zoo.cached_digits_resnet(out / "digits_resnet10.pt", (1, 1, 1, 1), console=console)
    float_model = convert.from_torch_recipe(torch_model)  # the reference, and the teacher distilled
    ideal = tune.evaluate(float_model, test)[1]
    model = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode="noisy", weight_bits=WEIGHT_BITS)
    tune.calibrate_ranges(model, split.x_train)
    before = tune.evaluate(model, test, draws=args.draws)[1]
    start = time.perf_counter()
    history = tune.finetune(model, train, optimizer=tune.warmup_cosine_adam(args.learning_rate, args.steps),
                            steps=args.steps, teacher=float_model)
    seconds = time.perf_counter() - start
    after = tune.evaluate(model, test, draws=args.draws)[1]
    control = convert.from_torch_recipe(torch_model)
    tune.finetune(control, train, optimizer=tune.warmup_cosine_adam(args.learning_rate, args.steps), steps=args.steps,
                  mode="ideal", progress=False)
    control_accuracy = tune.evaluate(control, test)[1]

    def recovered(reference: float) -> float:
        return (after - before) / (reference - before) if reference > before else float("nan")

    table = Table(title=f"digits ResNet-10 on the hardware: {WEIGHT_BITS}-bit weights, {HARDWARE.dac_bits}-bit converters, "
                        f"{HARDWARE.channel_spacing_nm} nm spacing, SNR {float(hw.snr_db(HARDWARE)):.1f} dB")
    for column in ("model", "test accuracy"):
        table.add_column(column)
    table.add_row("ideal (float)", f"{ideal:.2%}")
    table.add_row("on the hardware, before fine-tuning", f"{before:.2%}")
    table.add_row(f"on the hardware, after {args.steps} steps ({seconds:.0f} s)", f"{after:.2%}")
    table.add_row(f"float, trained alike for {args.steps} steps (control)", f"{control_accuracy:.2%}")
    table.add_row("share of the hardware's cost recovered", f"{recovered(ideal):.0%} (target ≥ 90%)")
    table.add_row("… against the control", f"{recovered(control_accuracy):.0%}")
    console.print(table)
    figure = history.plot(out / "finetune_history.png")
    results = {"ideal": ideal, "before": before, "after": after, "control": control_accuracy,
               "recovered": recovered(ideal), "recovered_against_control": recovered(control_accuracy),
               "steps": args.steps, "draws": args.draws, "learning_rate": args.learning_rate, "seconds": seconds,
               "hardware": HARDWARE.to_dict(), "weight_bits": WEIGHT_BITS}
    (out / "finetune.json").write_text(json.dumps(results, indent=2))
    console.print(f"curves in {figure}, numbers in {out / 'finetune.json'}")


if __name__ == "__main__":
    main()
