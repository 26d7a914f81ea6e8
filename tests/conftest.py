"""Shared fixtures: the hardware configurations the tests reason about.
The benchmarks' folder is importable (the conversion tests take models from
its coverage zoo)."""

import sys
from pathlib import Path

import pytest

from lumijax.hardware import HardwareConfig

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture
def single_channel() -> HardwareConfig:
    """One 1 mW channel, 1 A/W, 10 GHz, 50 Ω, 300 K, −150 dB/Hz: SNR ≈ 47.8 dB."""
    return HardwareConfig(
        num_channels=1,
        fsr_nm=1.0,
        laser_power_mW=1.0,
        responsivity_A_per_W=1.0,
        bandwidth_GHz=10.0,
        load_resistance_ohm=50.0,
        temperature_K=300.0,
        rin_db_per_hz=-150.0,
    )


@pytest.fixture
def bank() -> HardwareConfig:
    """A 16-channel bank at Q = 1e4 on the 0.8 nm grid."""
    return HardwareConfig(quality_factor=1e4, channel_spacing_nm=0.8, num_channels=16, fsr_nm=20.0)


@pytest.fixture
def highest_precision():
    """Matrix products at full float32 precision, for parity with torch."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield
