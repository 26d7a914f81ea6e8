"""What the hardware physics implies, for people: a table and a spectrum plot.

The table sweeps channel spacing and ring Q and shows the adjacent-channel
crosstalk, the SNR (with and without linear compensation) and the usable
bits; the plot shows the drop-port spectra of one bank on its WDM grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.table import Table

from lumijax import hardware as hw

DEFAULT_SPACINGS_NM = (0.2, 0.4, 0.8, 1.6)
DEFAULT_QUALITY_FACTORS = (5.0e3, 1.0e4, 3.0e4, 1.0e5)


def sweep(
    config: hw.HardwareConfig,
    spacings_nm: Sequence[float] = DEFAULT_SPACINGS_NM,
    quality_factors: Sequence[float] = DEFAULT_QUALITY_FACTORS,
) -> list[dict[str, float]]:
    """Crosstalk, SNR and bits for every (Q, spacing) pair, one jitted call.

    The FSR is widened where needed so that all ``num_channels`` fit; the
    compensated column suppresses crosstalk power by 20 dB.

    Returns:
      One dict per pair with ``quality_factor``, ``channel_spacing_nm``,
      ``adjacent_crosstalk_db``, ``snr_db``, ``snr_compensated_db`` and
      ``effective_bits`` (uncompensated) and ``effective_bits_compensated``.
    """
    q_grid, spacing_grid = np.meshgrid(quality_factors, spacings_nm, indexing="ij")
    fsr_nm = max(float(config.fsr_nm), config.num_channels * max(spacings_nm))
    base = config.replace(fsr_nm=fsr_nm)

    @jax.jit
    def metrics(q, spacing):
        def one(q, spacing, suppression_db):
            c = base.replace(
                quality_factor=q,
                channel_spacing_nm=spacing,
                crosstalk_suppression_db=suppression_db,
            )
            return hw.adjacent_crosstalk_db(c), hw.snr_db(c), hw.effective_bits(c)

        raw = jax.vmap(one, (0, 0, None))(q, spacing, 0.0)
        compensated = jax.vmap(one, (0, 0, None))(q, spacing, 20.0)
        return raw, compensated

    (xt, snr, bits), (_, snr_comp, bits_comp) = metrics(
        jnp.asarray(q_grid.ravel()), jnp.asarray(spacing_grid.ravel())
    )
    return [
        {
            "quality_factor": float(q),
            "channel_spacing_nm": float(s),
            "adjacent_crosstalk_db": float(a),
            "snr_db": float(b),
            "snr_compensated_db": float(c),
            "effective_bits": int(d),
            "effective_bits_compensated": int(e),
        }
        for q, s, a, b, c, d, e in zip(
            q_grid.ravel(), spacing_grid.ravel(), xt, snr, snr_comp, bits, bits_comp
        )
    ]


def sweep_table(rows: list[dict[str, float]], config: hw.HardwareConfig) -> Table:
    """A rich table of :func:`sweep` rows."""
    table = Table(
        title=(
            f"Microring WDM bank: {config.num_channels} channels at λ0 = "
            f"{float(config.wavelength_nm):g} nm, {float(config.laser_power_mW):g} mW/channel, "
            f"{float(config.bandwidth_GHz):g} GHz, DAC/ADC {config.dac_bits}/{config.adc_bits} bits"
        ),
        caption="compensated: linear crosstalk compensation suppressing crosstalk power by 20 dB",
    )
    for header in ("Q", "Δ (nm)", "FWHM (nm)", "adj. XT (dB)", "SNR (dB)", "bits",
                   "SNR comp. (dB)", "bits comp."):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            f"{row['quality_factor']:.0e}",
            f"{row['channel_spacing_nm']:.2f}",
            f"{float(config.wavelength_nm) / row['quality_factor']:.4f}",
            f"{row['adjacent_crosstalk_db']:.2f}",
            f"{row['snr_db']:.1f}",
            str(row["effective_bits"]),
            f"{row['snr_compensated_db']:.1f}",
            str(row["effective_bits_compensated"]),
        )
    return table


def plot_ring_spectra(config: hw.HardwareConfig, path: str | Path, points: int = 4000) -> Path:
    """Plot the drop-port spectra of one bank on its WDM grid to a PNG.

    Each ring is a Lorentzian of FWHM ``λ0/Q`` centred on its carrier; the
    carriers are marked, and the title gives the adjacent crosstalk.

    Returns:
      The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.asarray(hw.channel_wavelengths_nm(config))
    spacing = float(config.channel_spacing_nm)
    grid = np.linspace(centres[0] - 1.5 * spacing, centres[-1] + 1.5 * spacing, points)
    response = np.asarray(
        hw.lorentzian_drop(grid[None, :] - centres[:, None], hw.fwhm_nm(config))
    )
    fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    for ring, curve in enumerate(response):
        ax.plot(grid, 10 * np.log10(curve), lw=1.0, label="ring drop ports" if ring == 0 else None)
    ax.vlines(centres, -40, 0, colors="0.6", linestyles=":", lw=0.8, label="carriers")
    xt = float(hw.adjacent_crosstalk_db(config))
    ax.axhline(xt, color="tab:red", lw=0.8, ls="--", label=f"adjacent crosstalk {xt:.1f} dB")
    ax.set_ylim(-40, 1)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("drop-port transmission (dB)")
    ax.set_title(
        f"{config.num_channels} rings, Q = {float(config.quality_factor):.0e}, "
        f"Δ = {spacing:g} nm, FWHM = {float(hw.fwhm_nm(config)):.3f} nm"
    )
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
