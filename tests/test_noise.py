"""Detector noise, SNR and usable bits against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

from lumijax import hardware as hw

# 1 mW on 1 A/W gives 1 mA; B = 10 GHz; R_L = 50 Ω; T = 300 K; RIN = −150 dB/Hz.
SHOT_A2 = 2 * 1.602176634e-19 * 1e-3 * 1e10  # 3.2044e-12
THERMAL_A2 = 4 * 1.380649e-23 * 300 * 1e10 / 50  # 3.3136e-12
RIN_A2 = 1e-15 * (1e-3) ** 2 * 1e10  # 1.0e-11


def test_noise_terms_by_hand(single_channel):
    budget = hw.noise_budget(single_channel)
    assert float(budget.signal_A) == pytest.approx(1e-3, rel=1e-6)
    assert float(budget.shot_A2) == pytest.approx(SHOT_A2, rel=1e-5)
    assert float(budget.thermal_A2) == pytest.approx(THERMAL_A2, rel=1e-5)
    assert float(budget.rin_A2) == pytest.approx(RIN_A2, rel=1e-5)
    assert float(budget.crosstalk_A2) == 0.0  # a single channel has no neighbours


def test_snr_and_enob_by_hand(single_channel):
    snr_db = 10 * math.log10(1e-6 / (SHOT_A2 + THERMAL_A2 + RIN_A2))
    assert snr_db == pytest.approx(47.8, abs=0.05)
    assert float(hw.snr_db(single_channel)) == pytest.approx(snr_db, abs=1e-4)
    assert float(hw.enob(single_channel)) == pytest.approx((snr_db - 1.76) / 6.02, abs=1e-4)
    assert float(hw.enob(single_channel)) == pytest.approx(7.65, abs=0.01)
    assert int(hw.effective_bits(single_channel)) == 7


def test_effective_bits_are_capped_by_the_converters(single_channel):
    assert int(hw.effective_bits(single_channel.replace(dac_bits=6))) == 6
    assert int(hw.effective_bits(single_channel.replace(adc_bits=4, dac_bits=12))) == 4
    dim = single_channel.replace(laser_power_mW=1e-4)  # thermal-noise limited, SNR < 8 dB
    assert float(hw.enob(dim)) < 1.0
    assert int(hw.effective_bits(dim)) == 1


def test_higher_snr_gives_more_bits(single_channel):
    powers = [0.01, 0.1, 1.0, 10.0]
    bits = [int(hw.effective_bits(single_channel.replace(laser_power_mW=p, dac_bits=16, adc_bits=16))) for p in powers]
    assert bits == sorted(bits) and bits[0] < bits[-1]


def test_thermal_noise_scales_with_temperature_and_load(single_channel):
    hot = hw.noise_budget(single_channel.replace(temperature_K=600.0, load_resistance_ohm=25.0))
    assert float(hot.thermal_A2) == pytest.approx(4 * THERMAL_A2, rel=1e-5)


def test_crosstalk_noise_is_the_worst_rings_leak(bank):
    budget = hw.noise_budget(bank)
    fwhm = 1550.0 / 1e4
    leaks = [
        sum((1 / (1 + (2 * (j - i) * 0.8 / fwhm) ** 2)) ** 2 for j in range(16) if j != i)
        for i in range(16)
    ]
    assert float(budget.crosstalk_A2) == pytest.approx(1e-6 * max(leaks), rel=1e-4)
    suppressed = hw.noise_budget(bank.replace(crosstalk_suppression_db=20.0))
    assert float(suppressed.crosstalk_A2) == pytest.approx(1e-8 * max(leaks), rel=1e-4)
    quiet = hw.noise_budget(bank, include_crosstalk=False)
    assert float(quiet.crosstalk_A2) == 0.0
    assert float(hw.snr_db(bank)) < float(hw.snr_db(bank, include_crosstalk=False))


def test_snr_gradients_match_finite_differences(bank):
    with jax.enable_x64(True):
        def snr_db(spacing, temperature):
            config = bank.replace(channel_spacing_nm=spacing, temperature_K=temperature)
            return hw.snr_db(config)

        check_grads(snr_db, (jnp.float64(0.5), jnp.float64(300.0)), order=2, modes=("fwd", "rev"))
        grad_spacing, grad_temperature = jax.grad(snr_db, argnums=(0, 1))(0.5, 300.0)
        assert float(grad_spacing) > 0  # wider spacing, less crosstalk
        assert float(grad_temperature) < 0  # hotter receiver, more Johnson noise
