"""Convert a torch checkpoint into a photonic model and check it.

A torchvision ResNet-18 with a small-image stem (3×3, stride 1, no max
pool) is trained on scikit-learn's 8×8 digits and saved as a weights-only
``state_dict``. It is then converted twice, by the ResNet recipe from the
checkpoint file and by ``torch.export`` from the module, and the script
shows the parity of both with torch and the photonic model's accuracy in
ideal mode and on the noisy, crosstalk-limited, low-bit hardware.

    python examples/convert_torch_checkpoint.py [--out out/convert] [--epochs 6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lumijax import convert, layers, zoo
from lumijax import hardware as hw

STEM = dict(in_channels=1, stem_kernel=3, stem_stride=1, stem_pool=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/convert", help="folder for the checkpoint and the model file")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    console, out = Console(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, _, x_test, y_test = zoo.digits()

    checkpoint = out / "digits_resnet18.pt"
    torch_model = zoo.cached_digits_resnet(checkpoint, (2, 2, 2, 2), epochs=args.epochs, console=console)
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(x_test)).numpy()

    with jax.default_matmul_precision("highest"):
        start = time.perf_counter()
        model = convert.load_checkpoint(checkpoint, "resnet18", num_classes=10, **STEM)
        recipe_s = time.perf_counter() - start
        start = time.perf_counter()
        program = convert.from_torch(torch_model, (torch.from_numpy(x_test),))
        export_s = time.perf_counter() - start
        recipe_logits, program_logits = np.asarray(model(x_test)), np.asarray(program(x_test))

    scale = np.abs(reference).max()
    parity = Table(title="parity with torch (ideal mode, float32)")
    for column in ("path", "convert (s)", "max |Δ logit| / max |logit|", "test accuracy"):
        parity.add_column(column)
    parity.add_row("torch", "", "", f"{zoo.accuracy(reference, y_test):.2%}")
    parity.add_row("recipe from the checkpoint", f"{recipe_s:.1f}", f"{np.abs(recipe_logits - reference).max() / scale:.1e}", f"{zoo.accuracy(recipe_logits, y_test):.2%}")
    parity.add_row("torch.export of the module", f"{export_s:.1f}", f"{np.abs(program_logits - reference).max() / scale:.1e}", f"{zoo.accuracy(program_logits, y_test):.2%}")
    console.print(parity)
    console.print(convert.summarize(model, x_test[:1]).table(title="the photonic model (one 8×8 digit)"))

    hardware = hw.HardwareConfig(channel_spacing_nm=0.4, crosstalk_suppression_db=20.0)
    table = Table(title=f"on the hardware: {hardware.num_channels} channels at {hardware.channel_spacing_nm} nm, "
                        f"SNR {float(hw.snr_db(hardware)):.1f} dB")
    for column in ("weight bits", "mode", "test accuracy"):
        table.add_column(column)
    table.add_row("float", "ideal", f"{zoo.accuracy(recipe_logits, y_test):.2%}")
    for bits in (8, 6, 4):
        photonic = convert.load_checkpoint(checkpoint, "resnet18", hardware=hardware, mode="noisy", weight_bits=bits, num_classes=10, **STEM)
        noisy = np.asarray(photonic(x_test))
        layers.set_mode(photonic, "expected")
        table.add_row(str(bits), "expected / noisy", f"{zoo.accuracy(photonic(x_test), y_test):.2%} / {zoo.accuracy(noisy, y_test):.2%}")
    console.print(table)
    path = convert.save(model, out / "digits_resnet18.msgpack")
    start = time.perf_counter()
    convert.load(path)
    console.print(f"converted model saved to {path} ({path.stat().st_size / 1e6:.1f} MB), loads in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
