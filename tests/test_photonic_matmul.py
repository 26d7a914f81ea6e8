"""photonic_matmul: ideal, deterministic and noisy modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lumijax import hardware as hw


@pytest.fixture
def operands():
    x = jax.random.normal(jax.random.key(10), (6, 40))
    w = jax.random.normal(jax.random.key(11), (5, 40))
    return x, w


def test_ideal_mode_is_the_plain_product(operands):
    x, w = operands
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    np.testing.assert_allclose(hw.photonic_matmul(x, w), ref, rtol=1e-5, atol=1e-5)
    batched = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(hw.photonic_matmul(batched, w)[1], 2 * ref, rtol=1e-5, atol=1e-5)


def test_deterministic_mode_applies_the_coupling(bank, operands):
    x, w = operands
    config = bank.replace(channel_spacing_nm=0.4, thermal_coupling=0.02)
    coupled = np.asarray(hw.effective_weights(w, config))
    got = hw.photonic_matmul(x, w, config)
    np.testing.assert_allclose(got, np.asarray(x) @ coupled.T, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(got) - np.asarray(x) @ np.asarray(w).T).max() > 0.1


def test_compensation_undoes_the_coupling(bank, operands):
    x, w = operands
    config = bank.replace(channel_spacing_nm=0.4, thermal_coupling=0.02)
    got = hw.photonic_matmul(x, w, config, compensate=True)
    np.testing.assert_allclose(got, np.asarray(x) @ np.asarray(w).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fan_in,compensate", [(16, False), (40, False), (40, True)])
def test_noise_variance_matches_the_configured_snr(bank, fan_in, compensate):
    config = bank.replace(laser_power_mW=0.05)  # ~25 dB, so noise dominates rounding
    x = jax.random.uniform(jax.random.key(0), (512, fan_in), minval=-1.0, maxval=1.0)
    w = jax.random.normal(jax.random.key(1), (256, fan_in))
    clean = hw.photonic_matmul(x, w, config, compensate=compensate)
    noisy = hw.photonic_matmul(x, w, config, jax.random.key(2), compensate=compensate)
    noise = np.asarray(noisy - clean, np.float64)
    programmed = hw.compensate_crosstalk(w, config, weight_limit=jnp.inf).programmed if compensate else w
    full_scale = float(jnp.max(jnp.abs(x))) * np.abs(np.asarray(programmed)).max(axis=1)
    tiles = -(-fan_in // 16)
    snr = float(hw.snr(config, include_crosstalk=False))
    normalised = noise / (full_scale * np.sqrt(tiles / snr))
    # Sample variance of n = 131072 unit normals: std sqrt(2/n) ≈ 0.4 %.
    assert normalised.var() == pytest.approx(1.0, rel=0.02)
    assert abs(normalised.mean()) < 0.01
    measured_snr_db = 10 * np.log10((full_scale**2).mean() * tiles / (noise**2).mean())
    assert measured_snr_db == pytest.approx(float(hw.snr_db(config, include_crosstalk=False)), abs=0.1)


def test_same_key_same_noise(bank, operands):
    x, w = operands
    a = hw.photonic_matmul(x, w, bank, jax.random.key(5))
    b = hw.photonic_matmul(x, w, bank, jax.random.key(5))
    c = hw.photonic_matmul(x, w, bank, jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_gradients_flow_through_the_noise(bank):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(3), (4, 20), dtype=jnp.float64)
        w = jax.random.normal(jax.random.key(4), (3, 20), dtype=jnp.float64)

        def loss(x, w, spacing):
            config = bank.replace(channel_spacing_nm=spacing, laser_power_mW=0.1)
            return jnp.sum(hw.photonic_matmul(x, w, config, jax.random.key(0)) ** 2)

        check_grads(loss, (x, w, jnp.float64(0.5)), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)


def test_works_under_jit_and_vmap(bank, operands):
    x, w = operands
    keys = jax.random.split(jax.random.key(0), 3)
    f = jax.jit(jax.vmap(lambda k: hw.photonic_matmul(x, w, bank, k)))
    out = f(keys)
    for k, got in zip(keys, out):
        np.testing.assert_allclose(got, hw.photonic_matmul(x, w, bank, k), rtol=1e-5, atol=1e-5)


def test_bad_operands_raise_clear_errors(bank):
    w = jnp.ones((3, 8))
    with pytest.raises(ValueError, match=r"last axis of x must equal weight.shape\[1\] = 8"):
        hw.photonic_matmul(jnp.ones((2, 7)), w, bank)
    with pytest.raises(ValueError, match="x must be a real floating array"):
        hw.photonic_matmul(jnp.ones((2, 8), jnp.int32), w, bank)
    with pytest.raises(ValueError, match=r"shape \(out, in\)"):
        hw.photonic_matmul(jnp.ones((2, 8)), jnp.ones((2, 3, 8)))


@pytest.mark.parametrize("compensate", [False, True])
def test_programmed_bank_tile_by_tile(compensate):
    """``program_bank`` against a loop over the tiles in numpy: the rings
    hold ``W`` (or ``W·(M₀ᵀ)⁻¹``) and apply it through the drifted coupling."""
    config = hw.HardwareConfig(num_channels=8, channel_spacing_nm=0.2, thermal_coupling=0.04)
    w = np.asarray(jax.random.normal(jax.random.key(4), (5, 21)), np.float64)  # two full tiles and one of 5
    detuning = np.linspace(-0.02, 0.03, 8)
    bank = hw.program_bank(jnp.asarray(w.T, jnp.float32), config, ring_detuning_nm=detuning, compensate=compensate)
    effective, programmed = np.zeros_like(w), np.zeros_like(w)
    for start in range(0, 21, 8):
        size = min(8, 21 - start)
        tile = slice(start, start + size)
        assumed = np.asarray(hw.coupling_matrix(config, None, size), np.float64)
        drifted = np.asarray(hw.coupling_matrix(config, detuning[:size], size), np.float64)
        programmed[:, tile] = w[:, tile] @ np.linalg.inv(assumed.T) if compensate else w[:, tile]
        effective[:, tile] = programmed[:, tile] @ drifted.T
    np.testing.assert_allclose(np.asarray(bank.effective).T, effective, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bank.full_scale, np.abs(programmed).max(axis=1), rtol=1e-5)
    if compensate:  # on the grid, compensation gives back W itself
        on_grid = hw.program_bank(jnp.asarray(w.T, jnp.float32), config, compensate=True)
        np.testing.assert_array_equal(on_grid.effective, np.asarray(w.T, np.float32))


@pytest.mark.parametrize("fan_in", [48, 37, 5])  # whole tiles, a shorter last tile, one short tile
def test_the_programmed_full_scale_and_its_gradient_follow_the_compensated_weights(fan_in):
    # max |W·(M₀ᵀ)⁻¹| per output, from the tile-by-tile product in numpy; its
    # gradient in the kernel and the channel spacing against JAX's own
    # gradient of the dense formula (random weights: no ties).
    config = hw.HardwareConfig(num_channels=16, channel_spacing_nm=0.3)
    kernel = np.random.default_rng(fan_in).normal(size=(fan_in, 7)).astype(np.float32)
    inverse = lambda c, n: np.linalg.inv(np.asarray(hw.coupling_matrix(c, None, n), np.float64))
    programmed = np.concatenate([inverse(config, min(16, fan_in - s)) @ kernel[s:s + 16]
                                 for s in range(0, fan_in, 16)])
    bank = hw.program_bank(kernel, config, compensate=True)
    np.testing.assert_allclose(bank.full_scale, np.abs(programmed).max(axis=0), rtol=1e-5)

    def dense(kernel, spacing):
        c = config.replace(channel_spacing_nm=spacing)
        parts = [jnp.linalg.inv(hw.coupling_matrix(c, None, min(16, fan_in - s))) @ kernel[s:s + 16]
                 for s in range(0, fan_in, 16)]
        return jnp.sum(jnp.sin(jnp.max(jnp.abs(jnp.concatenate(parts)), axis=0)))

    def peak(kernel, spacing):
        bank = hw.program_bank(kernel, config.replace(channel_spacing_nm=spacing), compensate=True)
        return jnp.sum(jnp.sin(bank.full_scale))

    got = jax.grad(peak, argnums=(0, 1))(jnp.asarray(kernel), jnp.float32(0.3))
    want = jax.grad(dense, argnums=(0, 1))(jnp.asarray(kernel), jnp.float32(0.3))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_the_peak_gradient_goes_to_the_first_entry_on_ties():
    # With the identity as the coupling the tile products are the blocks
    # themselves; equal peaks in one output go to the first (tile-major,
    # then row) entry, with its sign, as numpy's argmax picks it.
    blocks = np.zeros((3, 4, 5), np.float32)
    blocks[1, 2, 0], blocks[2, 0, 0] = -2.0, 2.0  # a tie across tiles
    blocks[0, 3, 1], blocks[0, 1, 1] = 1.5, 1.5  # a tie within a tile
    blocks[:, :, 2:] = np.random.default_rng(0).normal(size=(3, 4, 3))
    grad = jax.grad(lambda b: jnp.sum(hw._peak_of_tile_product(jnp.eye(4), b)))(jnp.asarray(blocks))
    flat = blocks.reshape(-1, 5)
    want = np.zeros_like(flat)
    first = np.argmax(np.abs(flat), axis=0)
    want[first, np.arange(5)] = np.sign(flat[first, np.arange(5)])
    np.testing.assert_array_equal(np.asarray(grad).reshape(-1, 5), want)
