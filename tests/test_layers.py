"""Photonic layers against Flax, numpy and the hardware model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumijax import hardware as hw
from lumijax import layers

X = jax.random.normal(jax.random.key(0), (6, 40))


def core(mode="expected", **kwargs):
    return layers.PhotonicCore(mode=mode, rngs=nnx.Rngs(0, noise=1), **kwargs)


def test_ideal_linear_is_nnx_linear():
    reference = nnx.Linear(40, 8, rngs=nnx.Rngs(3))
    layer = layers.OpticalLinear(40, 8, core=core("ideal"), rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(layer.kernel[...], reference.kernel[...])
    np.testing.assert_allclose(layer(X), reference(X), rtol=1e-6, atol=1e-6)


def test_ideal_conv_is_nnx_conv():
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 5))
    for strides, padding in [(1, "SAME"), (2, "VALID")]:
        reference = nnx.Conv(5, 7, (3, 3), strides, padding=padding, rngs=nnx.Rngs(4))
        layer = layers.OpticalConv(5, 7, 3, strides, padding=padding, core=core("ideal"), rngs=nnx.Rngs(4))
        np.testing.assert_allclose(layer(x), reference(x), rtol=1e-6, atol=1e-6)
        # the patch product (the non-ideal path) computes the same convolution
        exact = layers.OpticalConv(5, 7, 3, strides, padding=padding, weight_bits=16,
                                   core=core(input_bits=16, output_bits=16, hardware=hw.HardwareConfig(quality_factor=1e6)),
                                   rngs=nnx.Rngs(4))
        np.testing.assert_allclose(exact(x), reference(x), rtol=2e-3, atol=2e-3)


def test_ideal_complex_linear_is_the_numpy_complex_product():
    layer = layers.ComplexOpticalLinear(6, 3, mode="ideal", dtype=jnp.complex64, rngs=nnx.Rngs(5))
    x = (np.random.default_rng(0).standard_normal((4, 6)) + 1j * np.random.default_rng(1).standard_normal((4, 6))).astype(np.complex64)
    w = np.asarray(layer.amplitude[...]) * np.exp(1j * np.asarray(layer.phase[...]))
    np.testing.assert_allclose(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_complex_linear_quantizes_phases_and_adds_noise():
    layer = layers.ComplexOpticalLinear(8, 4, mode="expected", phase_bits=3, amplitude_bits=4, rngs=nnx.Rngs(6))
    w = np.asarray(layer.weight())
    phases = np.mod(np.angle(w), 2 * np.pi)
    steps = phases / (2 * np.pi / 8)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    layer.mode, layer.phase_noise_rad = "noisy", 0.1
    assert not np.allclose(np.asarray(layer.weight()), w)


def test_crosstalk_only_equals_x_times_coupled_weights():
    config = hw.HardwareConfig(channel_spacing_nm=0.4, quality_factor=1e4)
    layer = layers.OpticalLinear(40, 8, use_bias=False, weight_bits=16,
                                 core=core(hardware=config, compensate=False, input_bits=16, output_bits=16),
                                 rngs=nnx.Rngs(3))
    w = np.asarray(layer.kernel[...]).T
    coupled = np.asarray(hw.effective_weights(jnp.asarray(w), config))
    want = np.asarray(X) @ coupled.T
    got = np.asarray(layer(X))
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    assert np.abs(want - np.asarray(X) @ w.T).max() > 0.05  # the crosstalk is visible


def test_compensation_restores_the_ideal_product():
    config = hw.HardwareConfig(channel_spacing_nm=0.4, quality_factor=1e4, thermal_coupling=0.02)
    layer = layers.OpticalLinear(40, 8, weight_bits=16, core=core(hardware=config, input_bits=16, output_bits=16), rngs=nnx.Rngs(3))
    ideal = np.asarray(X) @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(layer(X), ideal, atol=2e-3 * np.abs(ideal).max())


def test_noise_variance_matches_the_configured_snr():
    config = hw.HardwareConfig(laser_power_mW=0.05, channel_spacing_nm=1.2)
    layer = layers.OpticalLinear(16, 128, use_bias=False, weight_bits=16,
                                 core=core("noisy", hardware=config, compensate=False, input_bits=16, output_bits=16),
                                 rngs=nnx.Rngs(3))
    x = jax.random.uniform(jax.random.key(7), (2048, 16), minval=-1, maxval=1)
    noisy = np.asarray(layer(x), np.float64)
    layer.core.mode = "expected"
    clean = np.asarray(layer(x), np.float64)
    w_fs = np.abs(np.asarray(layer.quantized(layer.kernel[...].T))).max(axis=1)
    sigma = float(jnp.max(jnp.abs(x))) * w_fs / np.sqrt(float(hw.snr(config, include_crosstalk=False)))
    normalised = (noisy - clean) / sigma
    assert normalised.var() == pytest.approx(1.0, rel=0.03)


def test_range_trackers_observe_calibration_batches():
    layer = layers.OpticalLinear(40, 8, core=core(), rngs=nnx.Rngs(3))
    assert int(layer.core.input_range.get_value().count) == 0
    layer(X, observe=True)
    layer(2 * X, observe=True)
    state = layer.core.input_range.get_value()
    assert int(state.count) == 2
    p1, p2 = np.percentile(np.abs(X), 99.9), np.percentile(np.abs(2 * X), 99.9)
    assert float(state.range) == pytest.approx(0.9 * p1 + 0.1 * p2, rel=1e-4)


def test_the_dac_is_unsigned_for_inputs_never_seen_negative():
    config = hw.HardwareConfig(quality_factor=1e6)  # no crosstalk to speak of
    layer = layers.OpticalLinear(40, 8, use_bias=False, weight_bits=16,
                                 core=core(hardware=config, compensate=False, input_bits=4, output_bits=16),
                                 rngs=nnx.Rngs(3))
    w = np.asarray(layer.quantized(layer.kernel[...].T))
    relu = np.maximum(np.asarray(X), 0.0)

    def dac(x, levels, lo):  # codes over [0, max] or ±max of the batch
        step = np.abs(x).max() / levels
        return step * np.clip(np.round(x / step), lo, levels)

    for x, levels, lo in [(relu, 15, 0), (np.asarray(X), 7, -8)]:
        want = dac(x, levels, lo) @ w.T
        np.testing.assert_allclose(layer(jnp.asarray(x)), want, atol=1e-3 * np.abs(want).max())
    layer(jnp.asarray(relu), observe=True)  # once observed non-negative, negatives clip to 0
    assert not bool(layer.core.input_range.get_value().signed)
    layer.core.output_range.set_value(layer.core.estimator.init())  # the ADC on this batch's range, not clipping
    tracked = float(layer.core.input_range.get_value().range)
    step = tracked / 15
    want = step * np.clip(np.round(np.asarray(X) / step), 0, 15) @ w.T
    np.testing.assert_allclose(layer(X), want, atol=1e-3 * np.abs(want).max())


def test_gradients_reach_spacing_and_scales_and_match_finite_differences():
    config = hw.HardwareConfig(channel_spacing_nm=0.3, quality_factor=1e4)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(2).standard_normal((16, 40)))
        r = jnp.asarray(np.random.default_rng(3).standard_normal((16, 8)))
        layer = layers.OpticalLinear(40, 8, weight_bits=16,
                                     core=core(hardware=config, compensate=False, input_bits=16, output_bits=16),
                                     rngs=nnx.Rngs(3))
        grads = nnx.grad(lambda m: jnp.sum(m(x) * r))(layer)
        assert float(jnp.abs(grads.log_weight_scale[...]).sum()) > 0
        graph, state = nnx.split(layer)

        def loss(spacing):
            model = nnx.merge(graph, state)
            model.core.channel_spacing_nm[...] = spacing
            return jnp.sum(model(x) * r)

        eps = 0.01
        finite = (loss(0.3 + eps) - loss(0.3 - eps)) / (2 * eps)
        analytic = grads.core.channel_spacing_nm[...]
        assert abs(float(analytic)) > 1.0
        assert float(analytic) == pytest.approx(float(finite), rel=0.05)


def test_adaptive_calibration_sets_the_scales():
    layer = layers.OpticalLinear(40, 8, weight_bits=4, core=core(), rngs=nnx.Rngs(3))
    before = np.asarray(layer.scale())
    params = layer.calibrate({"snr_db": 25.0})
    np.testing.assert_allclose(layer.scale(), params.scale, rtol=1e-6)
    assert np.all(np.asarray(params.scale) <= before + 1e-9)  # clipping below min-max


def test_photonic_attention_ideal_matches_causal_attention():
    att = layers.PhotonicAttention(16, 2, core=core("ideal"), rngs=nnx.Rngs(8))
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    proj = lambda lin: np.asarray(x) @ np.asarray(lin.kernel[...]) + np.asarray(lin.bias[...])
    q, k, v = (proj(l).reshape(2, 5, 2, 8).transpose(0, 2, 1, 3) for l in (att.query, att.key, att.value))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mixed = (p @ v).transpose(0, 2, 1, 3).reshape(2, 5, 16)
    want = mixed @ np.asarray(att.out.kernel[...]) + np.asarray(att.out.bias[...])
    np.testing.assert_allclose(att(x), want, rtol=1e-4, atol=1e-5)
    att.core.mode = "noisy"
    noisy = np.asarray(att(x))
    assert noisy.shape == want.shape and 0 < np.abs(noisy - want).max() < 0.5 * np.abs(want).max()


def test_layers_run_under_nnx_jit():
    layer = layers.OpticalLinear(40, 8, core=core("noisy"), rngs=nnx.Rngs(3))
    step = nnx.jit(lambda m, x: m(x))
    a, b = step(layer, X), step(layer, X)
    assert not np.allclose(a, b)  # fresh noise keys each call


def test_bad_mode_and_shapes_raise():
    with pytest.raises(ValueError, match="mode"):
        layers.PhotonicCore(mode="perfect", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible"):
        layers.PhotonicAttention(10, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="complex64 or complex128"):
        layers.ComplexOpticalLinear(2, 2, dtype=jnp.float32, rngs=nnx.Rngs(0))
