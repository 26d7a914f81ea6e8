"""The end-to-end demonstration behind ``make demo``.

torch model trained on shipped data (scikit-learn's digits; cached) →
convert to a photonic NNX model → calibrate the converters → fine-tune
under the noisy, 4-bit, crosstalk-limited hardware (for those converter
ranges, which the file keeps) → plan the wavelengths → export the ``.lmn``
file → run it with the Rust ``lmn`` binary → compare with the Python model
→ one report and the plots.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lumijax import convert, layers, native, tune, wdm, zoo
from lumijax import hardware as hw
from lumijax.exporter import LuminaExporter
from lumijax.runtime import lmn_binary

#: The hardware of the demo: 4-bit weights on 4-bit converters, detector
#: noise and WDM crosstalk at 0.4 nm (compensated linearly).
HARDWARE = hw.HardwareConfig(channel_spacing_nm=0.4, dac_bits=4, adc_bits=4)
WEIGHT_BITS = 4
BLOCKS = (1, 1, 1, 1)  # ResNet-10
#: Fine-tuning starts from a trained model: Adam peaking at this rate,
#: warmed up and cosine-decayed (:func:`lumijax.tune.warmup_cosine_adam`).
LEARNING_RATE = 3e-4
#: Noisy accuracies are the mean over this many noise draws of the test set.
DRAWS = 5


def native_table(info: dict) -> Table:
    """A small table of :func:`lumijax.native.build_info`."""
    table = Table(title="Native kernels (lumijax._native)", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("version", info["version"])
    table.add_row("profile", info["profile"])
    features = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["target_features"].items())
    table.add_row("CPU features", features)
    table.add_row("threads", str(info["threads"]))
    return table


def _run_lmn(binary: Path, model: Path, inputs: Path, out_dir: Path, mode: str, seed: int = 0) -> tuple[np.ndarray, float]:
    """``lmn run`` on the ``.npy`` file ``inputs`` in a fresh process; its
    output and wall time (s)."""
    output = out_dir / f"demo_output_{mode}.npy"
    start = time.perf_counter()
    subprocess.run([binary, "run", model, "--input", inputs, "--output", output, "--mode", mode, "--seed", str(seed)],
                   check=True, capture_output=True, text=True)
    return np.load(output), time.perf_counter() - start


def run(out_dir: Path, console: Console | None = None, steps: int = 60) -> dict:
    """Runs the pipeline, writing the checkpoint, the ``.lmn`` file, the
    plots and ``demo.json`` under ``out_dir``; returns the report."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(native_table(native.build_info()))
    binary = lmn_binary()
    if binary is None:
        raise RuntimeError("the lmn binary is not built (cargo build --release -p lumijax-export --bin lmn)")
    split = zoo.digits()
    train, test = (split.x_train, split.y_train), (split.x_test, split.y_test)
    clock = time.perf_counter()

    torch_model = zoo.cached_digits_resnet(out_dir / "digits_resnet10.pt", BLOCKS, console=console)
    ideal_accuracy = tune.evaluate(convert.from_torch_recipe(torch_model), test)[1]
    model = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode="noisy", weight_bits=WEIGHT_BITS)
    tune.calibrate_ranges(model, split.x_train)
    before = tune.evaluate(model, test, draws=DRAWS)[1]
    history = tune.finetune(model, train, optimizer=tune.warmup_cosine_adam(LEARNING_RATE, steps), steps=steps, progress=True)
    after = tune.evaluate(model, test, draws=DRAWS)[1]

    plan = wdm.WDMPlanner(HARDWARE).optimize_allocation(model)
    plan.apply(model)  # the model as the file will run it
    path = LuminaExporter(HARDWARE).export(model, out_dir / "digits_resnet10.lmn", [split.x_test], plan)
    spacings = np.array([op.spacing_nm for op in plan.ops])

    layers.set_mode(model, "expected")
    python_logits = np.asarray(model(split.x_test))
    inputs = out_dir / "demo_input.npy"
    np.save(inputs, split.x_test)
    rust_logits, rust_s = _run_lmn(binary, path, inputs, out_dir, "expected")
    rust_noisy = np.mean([zoo.accuracy(_run_lmn(binary, path, inputs, out_dir, "noisy", seed)[0], split.y_test)
                          for seed in range(DRAWS)])
    # The logits leave the last ADC: the runtimes agree code for code, except
    # where float rounding puts a value on the other side of a code boundary.
    fc = model.fc.core
    adc_step = float(fc.output_range.get_value().range) / ((1 << (fc.output_bits - 1)) - 1)
    steps_apart = np.round(np.abs(rust_logits - python_logits) / adc_step)
    startup = json.loads(subprocess.run([binary, "bench", path, "--iterations", "1", "--json"], check=True,
                                        capture_output=True, text=True).stdout)
    seconds = time.perf_counter() - clock

    report = {
        "accuracy": {"ideal": ideal_accuracy, "hardware_before_finetune": before, "hardware_after_finetune": after,
                     "rust_expected": zoo.accuracy(rust_logits, split.y_test),
                     "rust_noisy": float(rust_noisy)},
        "noise_draws": DRAWS,
        "weight_bits": WEIGHT_BITS, "converter_bits": HARDWARE.dac_bits,
        "snr_db_at_0.4nm": float(hw.snr_db(HARDWARE)),
        "planned_spacing_nm": {"min": float(spacings.min()), "mean": float(spacings.mean()), "max": float(spacings.max())},
        "band_used_nm_mean": float(HARDWARE.num_channels * spacings.mean()),
        "band_fixed_grid_nm": HARDWARE.num_channels * 0.8,
        "lmn_bytes": path.stat().st_size,
        "lmn_run_seconds": rust_s,
        "lmn_startup_ms": startup["open_ms"] + startup["prepare_ms"],
        "rust_vs_python": {"logits": int(steps_apart.size), "differing": int(np.count_nonzero(steps_apart)),
                           "max_adc_steps": int(steps_apart.max())},
        "pipeline_seconds": seconds,
    }
    console.print(plan.table())
    console.print(_report_table(report))
    figures = [
        str(history.plot(out_dir / "demo_finetune.png")),
        str(plan.plot_spectra(plan.ops[0].name, out_dir / "demo_spectrum.png")),
    ]
    report["figures"] = figures
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    console.print(f"figures: {', '.join(figures)}; report: {out_dir / 'demo.json'}")
    return report


def _report_table(report: dict) -> Table:
    accuracy = report["accuracy"]
    table = Table(title="lumijax demo: digits ResNet-10, torch → photonic → fine-tune → plan → .lmn → Rust")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("test accuracy, ideal (float)", f"{accuracy['ideal']:.2%}")
    table.add_row(f"on the hardware ({report['weight_bits']}-bit weights and converters, 0.4 nm), before fine-tuning "
                  f"(mean of {report['noise_draws']} noise draws)",
                  f"{accuracy['hardware_before_finetune']:.2%}")
    table.add_row("on the hardware, after fine-tuning", f"{accuracy['hardware_after_finetune']:.2%}")
    table.add_row(f"Rust runtime, expected / noisy mode (noisy: mean of {report['noise_draws']} seeds)",
                  f"{accuracy['rust_expected']:.2%} / {accuracy['rust_noisy']:.2%}")
    agreement = report["rust_vs_python"]
    table.add_row("Rust vs Python (expected mode), logits an ADC code apart",
                  f"{agreement['differing']} of {agreement['logits']} (max {agreement['max_adc_steps']} codes)")
    table.add_row("SNR at 0.4 nm", f"{report['snr_db_at_0.4nm']:.1f} dB")
    spacing = report["planned_spacing_nm"]
    table.add_row("planned spacing min / mean / max", f"{spacing['min']:.3f} / {spacing['mean']:.3f} / {spacing['max']:.3f} nm")
    table.add_row("band used (mean) vs fixed 0.8 nm grid", f"{report['band_used_nm_mean']:.2f} / {report['band_fixed_grid_nm']:.1f} nm")
    table.add_row(".lmn file", f"{report['lmn_bytes'] / 1e6:.2f} MB")
    table.add_row("Rust runtime start-up (open, validate, prepare)", f"{report['lmn_startup_ms']:.1f} ms")
    table.add_row("lmn run (process start to output, 360 images)", f"{1e3 * report['lmn_run_seconds']:.0f} ms")
    table.add_row("pipeline time", f"{report['pipeline_seconds']:.0f} s")
    return table
