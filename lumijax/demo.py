"""The end-to-end demonstration behind ``make demo``.

It reports the native build, then the hardware physics: crosstalk, SNR and
usable bits against channel spacing and ring Q, and a plot of the ring
spectra.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from lumijax import hardware as hw
from lumijax import native, physics_report


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


def run(out_dir: Path, console: Console | None = None) -> dict:
    """Run the demonstration, writing figures under ``out_dir``.

    Returns:
      A summary: the native build info, the sweep rows and the figure path.
    """
    console = console or Console()
    info = native.build_info()
    console.print(native_table(info))
    config = hw.HardwareConfig()
    rows = physics_report.sweep(config)
    console.print(physics_report.sweep_table(rows, config))
    figure = physics_report.plot_ring_spectra(config, out_dir / "ring_spectra.png")
    console.print(f"ring spectra written to [bold]{figure}[/bold]")
    return {"native": info, "sweep": rows, "figure": str(figure)}
