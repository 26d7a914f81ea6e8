"""The physics report, the plot and the ``lumijax`` command."""

import subprocess
import sys

import numpy as np
import pytest

from lumijax import cli, physics_report
from lumijax import hardware as hw
from lumijax.hardware import HardwareConfig


def test_sweep_rows_match_direct_evaluation():
    config = HardwareConfig()
    rows = physics_report.sweep(config, spacings_nm=(0.4, 1.6), quality_factors=(1e4, 1e5))
    assert [(r["quality_factor"], r["channel_spacing_nm"]) for r in rows] == [
        (1e4, 0.4), (1e4, 1.6), (1e5, 0.4), (1e5, 1.6)
    ]
    for row in rows:
        # 16 channels at 1.6 nm need a 25.6 nm FSR: the sweep widens it.
        c = config.replace(
            fsr_nm=25.6, quality_factor=row["quality_factor"], channel_spacing_nm=row["channel_spacing_nm"]
        )
        assert row["adjacent_crosstalk_db"] == pytest.approx(float(hw.adjacent_crosstalk_db(c)), abs=1e-4)
        assert row["snr_db"] == pytest.approx(float(hw.snr_db(c)), abs=1e-3)
        assert row["effective_bits"] == int(hw.effective_bits(c))
        compensated = c.replace(crosstalk_suppression_db=20.0)
        assert row["snr_compensated_db"] == pytest.approx(float(hw.snr_db(compensated)), abs=1e-3)
        assert row["snr_compensated_db"] >= row["snr_db"]
    assert rows[0]["adjacent_crosstalk_db"] == pytest.approx(-14.42, abs=0.01)


def test_ring_spectra_plot(tmp_path):
    import matplotlib.image

    path = physics_report.plot_ring_spectra(HardwareConfig(num_channels=8, fsr_nm=8.0), tmp_path / "s.png")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_physics_command_prints_the_table(capsys):
    assert cli.main(["physics", "--spacings-nm", "0.8", "--quality-factors", "1e4"]) == 0
    out = capsys.readouterr().out
    assert "-20.32" in out and "1e+04" in out


def test_physics_command_rejects_impossible_hardware(capsys):
    assert cli.main(["physics", "--channels", "64", "--fsr-nm", "10"]) == 2
    assert "exceeds fsr_nm" in capsys.readouterr().err


def test_more_quality_factor_or_spacing_never_costs_bits():
    rows = physics_report.sweep(hw.HardwareConfig(), (0.2, 0.4, 0.8, 1.6), (5e3, 1e4, 3e4, 1e5))
    bits = np.array([row["effective_bits"] for row in rows]).reshape(4, 4)
    assert (np.diff(bits, axis=0) >= 0).all() and (np.diff(bits, axis=1) >= 0).all()


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "lumijax.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "physics" in out.stdout and "demo" in out.stdout
