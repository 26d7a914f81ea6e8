"""The ``lumijax`` command line."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from rich.console import Console


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
