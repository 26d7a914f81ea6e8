"""The ``lumijax`` command line."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _demo(args: argparse.Namespace) -> int:
    from lumijax import demo

    demo.run(Path(args.out), Console())
    return 0


def _physics(args: argparse.Namespace) -> int:
    from lumijax import hardware as hw
    from lumijax import physics_report

    try:
        config = hw.HardwareConfig(
            num_channels=args.channels,
            laser_power_mW=args.power_mW,
            fsr_nm=args.fsr_nm,
        )
    except ValueError as err:
        print(f"lumijax physics: {err}", file=sys.stderr)
        return 2
    console = Console()
    rows = physics_report.sweep(config, args.spacings_nm, args.quality_factors)
    console.print(physics_report.sweep_table(rows, config))
    if args.plot:
        console.print(f"ring spectra written to {physics_report.plot_ring_spectra(config, args.plot)}")
    return 0


def _config_value(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as a Python literal when it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _convert(args: argparse.Namespace) -> int:
    from lumijax import convert
    from lumijax import hardware as hw

    console = Console()
    try:
        hardware = hw.HardwareConfig(channel_spacing_nm=args.channel_spacing_nm, num_channels=args.channels)
        with console.status(f"converting {args.checkpoint} as {args.arch}"):
            model = convert.load_checkpoint(
                args.checkpoint, args.arch, hardware=hardware, mode=args.mode, weight_bits=args.weight_bits, **dict(args.set)
            )
            summary = convert.summarize(model)
            out = convert.save(model, args.out)
    except (convert.CheckpointError, ValueError, TypeError) as err:
        print(f"lumijax convert: {err}", file=sys.stderr)
        return 2
    console.print(summary.table(title=f"{args.arch} from {Path(args.checkpoint).name}"))
    console.print(f"photonic model written to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from lumijax import convert, layers, lmn, peg, wdm
    from lumijax.exporter import LuminaExporter

    console = Console()
    try:
        model = convert.load(args.model, mode=args.mode)
        example = np.load(args.input) if args.input else np.zeros(args.shape, np.int32 if model.arch in ("gpt2", "nanogpt") else np.float32)
        hardware = layers.photonic_cores(model)[0].hardware
        planner = wdm.WDMPlanner(hardware) if args.plan else None
        path = LuminaExporter(hardware, planner).export(model, args.out, [example])
        header, tensors = lmn.read(path)
    except (convert.ModelFileError, peg.ExportError, lmn.LmnError, ValueError, OSError) as err:
        print(f"lumijax export: {err}", file=sys.stderr)
        return 2
    table = Table(title=f"{Path(args.out).name}")
    table.add_column("")
    table.add_column("value", justify="right")
    nodes = header["graph"]["nodes"]
    table.add_row("nodes", str(len(nodes)))
    table.add_row("photonic ops", str(sum(1 for n in nodes if "core" in n["attrs"])))
    table.add_row("tensors", f"{len(tensors)} ({sum(t.nbytes for t in tensors.values()):,} bytes)")
    table.add_row("weights", "float32" if header["metadata"]["mode"] == "ideal" else "integer codes")
    table.add_row("WDM plan", "yes" if header["wdm"] else "no")
    table.add_row("file size", f"{path.stat().st_size:,} bytes")
    console.print(table)
    return 0


def _training_data(spec: str):
    """``digits`` (scikit-learn's 8×8 digits, NCHW, training split) or an
    ``.npz`` with ``inputs`` and ``targets``."""
    import numpy as np

    if spec == "digits":
        from lumijax import zoo

        split = zoo.digits()
        return split.x_train, split.y_train
    with np.load(spec, allow_pickle=False) as data:
        missing = {"inputs", "targets"} - set(data.files)
        if missing:
            raise ValueError(f"{spec}: no array named {' or '.join(sorted(missing))} (has {', '.join(data.files) or 'none'})")
        return data["inputs"], data["targets"]


def _tuning(args: argparse.Namespace, codesign: bool) -> int:
    import optax

    from lumijax import convert, layers, tune

    command = "codesign" if codesign else "tune"
    console = Console()
    try:
        if args.steps < 1 or args.learning_rate <= 0:
            raise ValueError(f"--steps {args.steps} and --learning-rate {args.learning_rate} must be positive")
        model = convert.load(args.model)
        data = _training_data(args.data)
        hardware = layers.photonic_cores(model)[0].hardware
        if codesign:
            tune.spacing_range(hardware, args.min_spacing_nm)
        tune.apply_hardware(model, hardware, "noisy")
        tune.calibrate_ranges(model, data[0], args.batch_size)
        before = tune.evaluate(model, data)
        if codesign:
            _, chosen, history = tune.codesign(model, data, hardware, optax.adam(args.learning_rate), args.steps,
                                               band_weight=args.band_weight, min_spacing_nm=args.min_spacing_nm,
                                               batch_size=args.batch_size)
        else:
            optimizer = tune.warmup_cosine_adam(args.learning_rate, args.steps)
            history, chosen = tune.finetune(model, data, optimizer=optimizer, steps=args.steps, batch_size=args.batch_size), hardware
        after = tune.evaluate(model, data)
        out = convert.save(model, args.out)
    except (convert.ModelFileError, ValueError, OSError, FloatingPointError) as err:
        print(f"lumijax {command}: {err}", file=sys.stderr)
        return 2
    table = Table(title=f"{command}: {Path(args.model).name} on {args.data}, {args.steps} steps under noisy hardware")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row("loss (nats)", f"{before[0]:.3f}", f"{after[0]:.3f}")
    table.add_row("accuracy", f"{before[1]:.2%}", f"{after[1]:.2%}")
    table.add_row("channel spacing (nm)", f"{float(hardware.channel_spacing_nm):.3f}", f"{float(chosen.channel_spacing_nm):.3f}")
    console.print(table)
    if args.plot:
        console.print(f"curves written to {history.plot(args.plot)}")
    console.print(f"tuned model written to {out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from lumijax import convert, layers, wdm

    console = Console()
    try:
        model = convert.load(args.model)
        hardware = layers.photonic_cores(model)[0].hardware
        plan = wdm.WDMPlanner(hardware, min_spacing_nm=args.min_spacing_nm).optimize_allocation(model)
    except (convert.ModelFileError, ValueError, OSError) as err:
        print(f"lumijax plan: {err}", file=sys.stderr)
        return 2
    console.print(plan.table())
    if args.out:
        Path(args.out).write_text(json.dumps(plan.to_dict(), indent=2))
        console.print(f"WDM map written to {args.out}")
    if args.plot:
        console.print(f"spectrum of {plan.ops[0].name} written to {plan.plot_spectra(plan.ops[0].name, args.plot)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from lumijax import lmn, runtime

    console = Console()
    try:
        model = runtime.load(args.model)
        if args.input.endswith(".npz"):
            with np.load(args.input, allow_pickle=False) as data:
                inputs = [data[name] if name in data.files else data[f"arr_{i}"] for i, (name, _, _) in enumerate(model.inputs)]
        else:
            inputs = [np.load(args.input, allow_pickle=False)]
        start = time.perf_counter()
        outputs = model.run(inputs, args.mode, args.seed)
        seconds = time.perf_counter() - start
        if args.output:
            np.save(args.output, outputs[0]) if len(outputs) == 1 else np.savez(args.output, *outputs)
    except (lmn.LmnError, ValueError, KeyError, OSError) as err:
        print(f"lumijax run: {err}", file=sys.stderr)
        return 2
    table = Table(title=f"{Path(args.model).name}, {args.mode} mode, {1e3 * seconds:.1f} ms")
    for column in ("output", "shape", "min", "max"):
        table.add_column(column)
    for (name, _, shape), value in zip(model.outputs, outputs):
        table.add_row(name, str(shape), f"{value.min():.4g}", f"{value.max():.4g}")
    console.print(table)
    if args.output:
        console.print(f"written to {args.output}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json
    import subprocess

    from lumijax import runtime

    binary = runtime.lmn_binary()
    if binary is None:
        print("lumijax bench: the lmn binary is not built (make builds it)", file=sys.stderr)
        return 2
    result = subprocess.run([binary, "bench", args.model, "--iterations", str(args.iterations), "--json"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"lumijax bench: {result.stderr.strip()}", file=sys.stderr)
        return 2
    stats = json.loads(result.stdout)
    table = Table(title=f"lmn bench {Path(args.model).name}")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for key, value in stats.items():
        if key.endswith("_ms"):
            table.add_row(key[:-3].replace("_", " "), f"{value:.3f}")
    Console().print(table)
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,32,32, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumijax", description="Differentiable photonic tensor-core simulation."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the end-to-end demonstration")
    demo.add_argument("--out", default="out", help="folder for figures (default: out)")
    demo.set_defaults(run=_demo)

    physics = commands.add_parser(
        "physics", help="crosstalk, SNR and usable bits against channel spacing and ring Q"
    )
    physics.add_argument("--channels", type=int, default=16, help="wavelengths per bank")
    physics.add_argument("--power-mW", type=float, default=1.0, help="optical power per channel (mW)")
    physics.add_argument("--fsr-nm", type=float, default=20.0, help="free spectral range (nm)")
    physics.add_argument("--spacings-nm", type=float, nargs="+", default=[0.2, 0.4, 0.8, 1.6])
    physics.add_argument("--quality-factors", type=float, nargs="+", default=[5e3, 1e4, 3e4, 1e5])
    physics.add_argument("--plot", metavar="PNG", help="also plot the ring spectra to this file")
    physics.set_defaults(run=_physics)

    from lumijax.convert.recipes import ARCHS

    conv = commands.add_parser("convert", help="convert a torch checkpoint into a photonic model file (msgpack)")
    conv.add_argument("checkpoint", help="state_dict as .pt/.pth/.bin/.ckpt (weights-only) or .safetensors")
    conv.add_argument("--arch", required=True, choices=ARCHS, help="the checkpoint's architecture")
    conv.add_argument("--out", required=True, help="where to write the photonic model (.msgpack)")
    conv.add_argument("--set", type=_config_value, action="append", default=[], metavar="KEY=VALUE",
                      help="architecture field, e.g. --set n_layer=6 --set num_classes=10 (repeatable)")
    conv.add_argument("--mode", default="ideal", choices=("ideal", "expected", "noisy"), help="simulation mode of the layers")
    conv.add_argument("--weight-bits", type=int, default=8, help="bits of the ring weights (default 8)")
    conv.add_argument("--channel-spacing-nm", type=float, default=0.8, help="WDM channel spacing (nm)")
    conv.add_argument("--channels", type=int, default=16, help="wavelengths per bank")
    conv.set_defaults(run=_convert)

    export = commands.add_parser("export", help="export a converted model (.msgpack) to an .lmn file for the Rust runtime")
    export.add_argument("model", help="a model written by lumijax convert")
    export.add_argument("--out", required=True, help="the .lmn file to write")
    inputs = export.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", help="an example input (.npy) fixing the graph's input shape")
    inputs.add_argument("--shape", type=_shape, help="the input shape, e.g. 1,3,32,32 (tokens for GPTs)")
    export.add_argument("--mode", choices=("ideal", "expected", "noisy"),
                        help="ideal stores float32 weights, the others integer codes (default: the model's)")
    export.add_argument("--plan", action="store_true", help="plan the wavelengths first and record the WDM map")
    export.set_defaults(run=_export)

    helps = {"tune": "fine-tune a converted model under its noisy, quantized, crosstalk-limited hardware",
             "codesign": "train weights, quantization scales and one channel spacing together"}
    rates = {"tune": (3e-4, "peak Adam learning rate (linear warm-up, then cosine decay)"),
             "codesign": (1e-3, "Adam's learning rate for the weights")}
    for name, codesign in (("tune", False), ("codesign", True)):
        tuning = commands.add_parser(name, help=helps[name])
        tuning.add_argument("model", help="a model written by lumijax convert")
        tuning.add_argument("--data", default="digits",
                            help="training data: 'digits' (scikit-learn, 1×8×8 images) or an .npz with inputs and targets")
        tuning.add_argument("--out", required=True, help="where to write the tuned model (.msgpack)")
        tuning.add_argument("--steps", type=int, default=200)
        rate_default, rate_help = rates[name]
        tuning.add_argument("--learning-rate", type=float, default=rate_default, help=rate_help)
        tuning.add_argument("--batch-size", type=int, default=64)
        tuning.add_argument("--plot", metavar="PNG", help="write the loss and accuracy curves here")
        if codesign:
            tuning.add_argument("--band-weight", type=float, default=0.05, help="penalty per 16×0.8 nm of band used")
            tuning.add_argument("--min-spacing-nm", type=float, default=0.05, help="the smallest spacing allowed (nm)")
        tuning.set_defaults(run=lambda args, codesign=codesign: _tuning(args, codesign))

    plan = commands.add_parser("plan", help="plan the wavelengths of a converted model (WDM map)")
    plan.add_argument("model", help="a model written by lumijax convert")
    plan.add_argument("--min-spacing-nm", type=float, default=0.05, help="the smallest spacing the fabrication allows (nm)")
    plan.add_argument("--out", help="write the WDM map as JSON")
    plan.add_argument("--plot", metavar="PNG", help="plot the planned spectrum of the first op")
    plan.set_defaults(run=_plan)

    run = commands.add_parser("run", help="run an .lmn file on the Rust runtime")
    run.add_argument("model", help="an .lmn file")
    run.add_argument("--input", required=True, help=".npy (one input) or .npz (inputs by name or order)")
    run.add_argument("--output", help="write the output (.npy, or .npz for several)")
    run.add_argument("--mode", default="ideal", choices=("ideal", "expected", "noisy"))
    run.add_argument("--seed", type=int, default=0, help="noise seed of the noisy mode")
    run.set_defaults(run=_run)

    bench = commands.add_parser("bench", help="time loading, validation and inference of an .lmn file (lmn bench)")
    bench.add_argument("model", help="an .lmn file")
    bench.add_argument("--iterations", type=int, default=20)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
