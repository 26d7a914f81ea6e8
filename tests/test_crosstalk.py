"""Ring response, WDM and heater crosstalk, drift and compensation.

References are closed-form values and explicit numpy loops over rings and
carriers, written from the physics rather than from lumijax's vectorised code.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lumijax import hardware as hw
from lumijax.hardware import HardwareConfig


def lorentz(detuning_nm, wavelength_nm, quality_factor):
    fwhm = wavelength_nm / quality_factor
    return 1.0 / (1.0 + (2.0 * detuning_nm / fwhm) ** 2)


def reference_coupling(n, spacing, q, kappa=0.0, ring_detuning=None, wavelength=1550.0):
    """M[j, i] = Σ_r C[j, r]·K[r, i], from the ring/carrier picture, by loops."""
    ring_detuning = np.zeros(n) if ring_detuning is None else np.asarray(ring_detuning)
    c = np.empty((n, n))
    for carrier in range(n):
        for ring in range(n):
            delta = (carrier - ring) * spacing - ring_detuning[ring]
            c[carrier, ring] = lorentz(delta, wavelength, q)
    k = np.array([[kappa ** abs(r - i) for i in range(n)] for r in range(n)])
    return c @ k


def reference_effective_weights(w, n, **coupling):
    """Each tile of n inputs is one bank: W_eff[o, i] = Σ_r W[o, r]·M[i, r]."""
    w = np.asarray(w, dtype=np.float64)
    out = np.zeros_like(w)
    for start in range(0, w.shape[1], n):
        width = min(n, w.shape[1] - start)
        m = reference_coupling(width, **coupling)
        for o in range(w.shape[0]):
            for i in range(width):
                out[o, start + i] = sum(w[o, start + r] * m[i, r] for r in range(width))
    return out


@pytest.mark.parametrize(
    "spacing_nm,expected_db", [(0.8, -20.32), (0.4, -14.42), (1.6, -26.31)]
)
def test_adjacent_crosstalk_closed_form(spacing_nm, expected_db):
    config = HardwareConfig(
        quality_factor=1e4, channel_spacing_nm=spacing_nm, wavelength_nm=1550.0, fsr_nm=30.0
    )
    exact = 10 * math.log10(1 / (1 + (2 * spacing_nm / (1550.0 / 1e4)) ** 2))
    assert float(hw.adjacent_crosstalk_db(config)) == pytest.approx(exact, abs=1e-4)
    assert exact == pytest.approx(expected_db, abs=0.005)


def test_lorentzian_half_maximum_and_peak():
    fwhm = 0.155
    assert float(hw.lorentzian_drop(0.0, fwhm)) == 1.0
    np.testing.assert_allclose(hw.lorentzian_drop(jnp.array([-fwhm / 2, fwhm / 2]), fwhm), 0.5)


def test_channel_grid_is_centred_and_uniform(bank):
    with jax.enable_x64(True):
        grid = np.asarray(hw.channel_wavelengths_nm(bank))
    np.testing.assert_allclose(np.diff(grid), 0.8, rtol=1e-12)
    assert grid.mean() == pytest.approx(1550.0, abs=1e-9)


def test_crosstalk_matrix_matches_reference(bank):
    c = np.asarray(hw.crosstalk_matrix(bank))
    np.testing.assert_allclose(c, reference_coupling(16, 0.8, 1e4), rtol=1e-5)
    np.testing.assert_array_equal(np.diag(c), 1.0)
    np.testing.assert_allclose(c, c.T)


def test_drift_detunes_each_ring():
    config = HardwareConfig(num_channels=4, channel_spacing_nm=0.4, fsr_nm=2.0, thermo_optic_nm_per_K=0.08)
    delta_t = np.array([0.0, 0.5, -1.0, 2.0])
    drift = hw.thermal_drift_nm(config, delta_t)
    np.testing.assert_allclose(drift, 0.08 * delta_t, rtol=1e-6)
    c = np.asarray(hw.crosstalk_matrix(config, drift))
    np.testing.assert_allclose(
        c, reference_coupling(4, 0.4, 1e4, ring_detuning=0.08 * delta_t), rtol=1e-5
    )
    # A ring drifted by 0.16 nm (≈ one FWHM) keeps 1/(1 + (2·0.16/0.155)²) of its weight.
    assert c[3, 3] == pytest.approx(1 / (1 + (2 * 0.16 / 0.155) ** 2), rel=1e-5)


def test_thermal_crosstalk_decays_geometrically():
    config = HardwareConfig(num_channels=5, fsr_nm=5.0, thermal_coupling=0.1)
    k = np.asarray(hw.thermal_crosstalk_matrix(config))
    np.testing.assert_allclose(k, [[0.1 ** abs(i - j) for j in range(5)] for i in range(5)], rtol=1e-6)
    none = np.asarray(hw.thermal_crosstalk_matrix(config.replace(thermal_coupling=0.0)))
    np.testing.assert_array_equal(none, np.eye(5))


@pytest.mark.parametrize("fan_in", [16, 37, 5])
def test_effective_weights_tile_the_input_axis(fan_in):
    config = HardwareConfig(num_channels=16, channel_spacing_nm=0.4, thermal_coupling=0.05)
    w = np.random.default_rng(fan_in).normal(size=(3, fan_in))
    got = np.asarray(hw.effective_weights(jnp.asarray(w, jnp.float32), config))
    ref = reference_effective_weights(w, 16, spacing=0.4, q=1e4, kappa=0.05)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_compensation_recovers_weights_when_nothing_clips(bank):
    config = bank.replace(channel_spacing_nm=0.4, thermal_coupling=0.03)
    w = jax.random.normal(jax.random.key(0), (8, 40))
    result = hw.compensate_crosstalk(w, config, weight_limit=jnp.inf)
    assert float(result.clipped_fraction) == 0.0
    recovered = reference_effective_weights(np.asarray(result.programmed), 16, spacing=0.4, q=1e4, kappa=0.03)
    np.testing.assert_allclose(recovered, np.asarray(w), atol=2e-5)
    np.testing.assert_allclose(result.residual, 0.0, atol=2e-5)


def test_compensation_reports_the_residual_where_it_clips():
    config = HardwareConfig(num_channels=8, channel_spacing_nm=0.15, fsr_nm=2.0)
    # Alternating signs need programmed weights far beyond |w| = 1 at this spacing.
    w = jnp.array([[1.0, -1.0] * 4, [0.5] * 8])
    result = hw.compensate_crosstalk(w, config, weight_limit=1.0)
    programmed = np.asarray(result.programmed)
    assert np.abs(programmed).max() <= 1.0
    assert float(result.clipped_fraction) > 0.0
    expected = np.asarray(w) - reference_effective_weights(programmed, 8, spacing=0.15, q=1e4)
    np.testing.assert_allclose(result.residual, expected, atol=1e-5)
    assert np.abs(expected).max() > 0.05


def test_compensation_with_drift_matches_a_solve():
    config = HardwareConfig(num_channels=6, channel_spacing_nm=0.3, fsr_nm=2.0)
    drift = jnp.array([0.0, 0.01, -0.02, 0.0, 0.03, 0.0])
    w = jax.random.uniform(jax.random.key(3), (4, 6), minval=-1, maxval=1)
    programmed = hw.compensate_crosstalk(w, config, drift, weight_limit=jnp.inf).programmed
    m = reference_coupling(6, 0.3, 1e4, ring_detuning=np.asarray(drift))
    np.testing.assert_allclose(np.asarray(programmed) @ m.T, np.asarray(w), atol=1e-5)


def test_gradients_match_finite_differences(bank):
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(1), (3, 20), dtype=jnp.float64)

        def xt_db(spacing):
            return hw.adjacent_crosstalk_db(bank.replace(channel_spacing_nm=spacing))

        def eff(spacing, delta_t):
            config = bank.replace(channel_spacing_nm=spacing, thermal_coupling=0.02)
            return hw.effective_weights(w, config, hw.thermal_drift_nm(config, delta_t))

        spacing = jnp.float64(0.6)
        delta_t = jnp.linspace(-0.5, 0.5, 16, dtype=jnp.float64)
        check_grads(xt_db, (spacing,), order=2, modes=("fwd", "rev"))
        check_grads(eff, (spacing, delta_t), order=1, modes=("fwd", "rev"))
        # d/dΔ of 10·log10 L(Δ), by hand.
        fwhm = 1550.0 / 1e4
        u = 2 * 0.6 / fwhm
        closed = -10 / math.log(10) * (2 * u * 2 / fwhm) / (1 + u * u)
        assert float(jax.grad(xt_db)(spacing)) == pytest.approx(closed, rel=1e-10)


def test_jit_and_vmap_agree_with_eager(bank):
    spacings = jnp.array([0.3, 0.5, 0.9])
    w = jax.random.normal(jax.random.key(2), (4, 16))
    f = lambda s: hw.effective_weights(w, bank.replace(channel_spacing_nm=s))
    batched = jax.jit(jax.vmap(f))(spacings)
    for s, got in zip(spacings, batched):
        np.testing.assert_allclose(got, f(float(s)), rtol=1e-6, atol=1e-7)


def test_weight_shape_and_dtype_errors(bank):
    with pytest.raises(ValueError, match=r"shape \(out, in\)"):
        hw.effective_weights(jnp.ones(16), bank)
    with pytest.raises(ValueError, match="real floating"):
        hw.effective_weights(jnp.ones((2, 16), jnp.int32), bank)
