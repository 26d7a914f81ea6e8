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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
