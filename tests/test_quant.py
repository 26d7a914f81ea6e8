"""HWAQ: the weight quantizer, fake quantization, LSQ and the range estimator."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumijax import hardware as hw
from lumijax import quant

RNG = np.random.default_rng(11)


def weight_sets():
    """Weight matrices of the shapes and statistics layers have."""
    gauss = RNG.standard_normal((32, 96)).astype(np.float32) * 0.05
    laplace = RNG.laplace(size=(16, 128)).astype(np.float32) * 0.02
    outliers = gauss.copy()
    outliers[::7, 3] = 0.9
    skewed = np.abs(gauss) + 0.01
    return {"gauss": gauss, "laplace": laplace, "outliers": outliers, "skewed": skewed}


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_codes_in_range_and_integer_zero_points(symmetric, granularity):
    w = weight_sets()["skewed"]
    params = quant.WeightQuantizer(bits=4, symmetric=symmetric, granularity=granularity).calibrate(w, {"snr_db": 30.0})
    codes = np.asarray(quant.quantize(jnp.asarray(w), params))
    lo, hi = params.code_range
    assert (lo, hi) == (-8, 7) and codes.min() >= lo and codes.max() <= hi
    assert params.zero_point.dtype == jnp.int32
    expected_shape = (32, 1) if granularity == "per_channel" else ()
    assert params.scale.shape == expected_shape and params.zero_point.shape == expected_shape
    if symmetric:
        assert np.all(np.asarray(params.zero_point) == 0)
    assert np.all(np.asarray(params.scale) > 0)


def test_dequantize_inverts_quantize_on_the_grid():
    params = quant.QuantParams(jnp.full((3, 1), 0.25), jnp.array([[0], [1], [-2]], jnp.int32), 4)
    codes = jnp.array([[-8, 0, 7], [1, 2, 3], [-2, -2, 5]], jnp.int32)
    w = quant.dequantize(codes, params)
    np.testing.assert_array_equal(quant.quantize(w, params), codes)
    np.testing.assert_allclose(w, 0.25 * (np.asarray(codes) - np.array([[0], [1], [-2]])))


def test_bits_grow_with_snr():
    w = weight_sets()["gauss"]
    bits = [quant.WeightQuantizer().calibrate(w, {"snr_db": s}).bits for s in (8.0, 15.0, 25.0, 35.0, 45.0, 60.0)]
    assert bits == sorted(bits) and bits[0] == 1 and bits[-1] == 8  # capped by the 8-bit DAC/ADC
    assert bits[3] == math.floor((35.0 - 1.76) / 6.02)


def test_snr_from_temperature_and_power_follows_the_noise_model():
    config = hw.HardwareConfig()
    got = quant.hardware_snr_db({"temperature_K": 310.0, "power_budget_mW": 20.0}, config)
    want = hw.snr_db(config.replace(temperature_K=310.0, laser_power_mW=20.0 / config.num_channels))
    assert got == pytest.approx(float(want), abs=1e-4)
    brighter = quant.hardware_snr_db({"power_budget_mW": 200.0}, config)
    assert brighter > got


@pytest.mark.parametrize("name", ["gauss", "laplace", "outliers", "skewed"])
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_adaptive_output_error_never_above_minmax(name, bits, symmetric):
    w = jnp.asarray(weight_sets()[name])
    snr_db = 6.02 * bits + 1.76  # the SNR that sets these bits
    state = {"snr_db": snr_db}
    tiles = -(-w.shape[1] // hw.HardwareConfig().num_channels)
    errors = {}
    for method in ("adaptive", "minmax"):
        params = quant.WeightQuantizer(bits=bits, symmetric=symmetric, method=method).calibrate(w, state)
        errors[method] = np.asarray(quant.output_error(w, params, snr_db, tiles, 1.0 / 3.0, 1.0))
    assert np.all(errors["adaptive"] <= errors["minmax"] * (1 + 1e-6))
    if bits <= 4:  # clipping pays where rounding steps are coarse
        assert errors["adaptive"].sum() < (0.85 if symmetric else 0.95) * errors["minmax"].sum()


def test_activation_aware_rounding_lowers_the_output_error():
    w = jnp.asarray(weight_sets()["gauss"])
    # Correlated inputs, as a layer sees them: error feedback has cross terms to use.
    x = (RNG.standard_normal((400, 96)) @ RNG.standard_normal((96, 96)) * 0.2).astype(np.float32)
    quantizer = quant.WeightQuantizer(bits=4)
    codes, params = quantizer.quantize_weights(w, {"snr_db": 60.0}, activations=x)
    nearest = quant.quantize(w, params)
    y = x @ np.asarray(w).T
    error = lambda c: np.mean((x @ np.asarray(quant.dequantize(c, params)).T - y) ** 2)
    assert error(codes) < 0.9 * error(nearest)
    lo, hi = params.code_range
    assert np.asarray(codes).min() >= lo and np.asarray(codes).max() <= hi


def test_straight_through_gradient():
    params = quant.QuantParams(jnp.float32(0.1), jnp.int32(0), 4)  # range [-0.8, 0.7]
    w = jnp.array([-1.0, -0.5, 0.03, 0.33, 0.69, 0.9])
    grad = jax.grad(lambda w: jnp.sum(quant.fake_quant(w, params)))(w)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(quant.fake_quant(w, params), [-0.8, -0.5, 0.0, 0.3, 0.7, 0.7], atol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_converters_round_to_their_codes_with_straight_through_gradients(signed):
    x = RNG.uniform(-0.5, 2.5, 400).astype(np.float32)
    full_scale, bits = 2.0, 4
    levels = 7 if signed else 15  # codes −8…7 over ±2, or 0…15 over [0, 2]
    step = full_scale / levels
    want = step * np.clip(np.round(x / step), -8 if signed else 0, levels)
    got = jax.jit(quant.fake_convert, static_argnums=2)(jnp.asarray(x), full_scale, bits, jnp.asarray(signed))  # traced sign
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(np.unique(np.asarray(got)[(x >= 0) & (x <= full_scale)])) == levels + 1
    grad = jax.grad(lambda x: jnp.sum(quant.fake_convert(x, full_scale, bits, signed)))(jnp.asarray(x))
    code = np.round(x / step)
    np.testing.assert_array_equal(grad, ((code >= (-8 if signed else 0)) & (code <= levels)).astype(np.float32))
    with pytest.raises(ValueError, match="2..16"):
        quant.fake_convert(jnp.asarray(x), full_scale, 1)


def test_lsq_gradient_matches_the_closed_form_and_the_ste_surrogate():
    w = jnp.asarray(RNG.standard_normal((4, 10)).astype(np.float32))
    scale = jnp.asarray([[0.05], [0.2], [0.4], [0.1]], jnp.float32)
    g = jnp.asarray(RNG.standard_normal((4, 10)).astype(np.float32))
    bits, qn, qp = 4, -8, 7
    grad_w, grad_s = jax.grad(lambda w, s: jnp.sum(g * quant.lsq_quant(w, s, bits, 1.0)), argnums=(0, 1))(w, scale)
    v = np.asarray(w) / np.asarray(scale)
    inside = (v >= qn) & (v <= qp)
    d_s = np.where(inside, np.round(v) - v, np.clip(v, qn, qp))  # Esser et al., eq. 3
    np.testing.assert_allclose(grad_s, (np.asarray(g) * d_s).sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grad_w, np.where(inside, np.asarray(g), 0.0))

    # The same gradient by automatic differentiation of s·(clip(v) + sg(round(clip(v)) − clip(v))).
    def surrogate(w, s):
        c = jnp.clip(w / s, qn, qp)
        return jnp.sum(g * s * (c + jax.lax.stop_gradient(jnp.round(c) - c)))

    np.testing.assert_allclose(jax.grad(surrogate, argnums=1)(w, scale), grad_s, rtol=1e-5, atol=1e-6)
    default = jax.grad(lambda s: jnp.sum(g * quant.lsq_quant(w, s, bits)))(scale)
    np.testing.assert_allclose(default, grad_s / math.sqrt(10 * qp), rtol=1e-5)


def test_torch_numpy_and_jax_weights_give_the_same_parameters():
    torch = pytest.importorskip("torch")
    w = weight_sets()["laplace"]
    quantizer = quant.WeightQuantizer(bits=6)
    results = [quantizer.calibrate(x, {"snr_db": 38.0}) for x in (w, jnp.asarray(w), torch.from_numpy(w))]
    for other in results[1:]:
        np.testing.assert_array_equal(other.scale, results[0].scale)
        np.testing.assert_array_equal(other.zero_point, results[0].zero_point)


@pytest.mark.parametrize(
    "weights,state,kwargs,match",
    [
        (np.full((2, 3), np.nan, np.float32), {"snr_db": 30.0}, {}, "NaN"),
        (np.zeros((0, 3), np.float32), {"snr_db": 30.0}, {}, "empty"),
        (np.ones((2, 3), np.float32), {"snr_db": 30.0}, {"bits": 0}, "bits"),
        (np.ones((2, 3), np.float32), {"snr_db": 30.0}, {"bits": 17}, "bits"),
        (np.ones((2, 3), np.float32), {"snr": 30.0}, {}, "unknown key 'snr'"),
        (np.ones((2, 3), np.float32), {"snr_db": float("nan")}, {}, "'snr_db'"),
        (np.ones((2, 3), np.float32), {"temperature_K": -4.0}, {}, "'temperature_K'"),
        (np.ones((2, 3), np.float32), {"power_budget_mW": 0.0}, {}, "'power_budget_mW'"),
        (np.ones(3, np.float32), {"snr_db": 30.0}, {}, r"shape \(out, in\)"),
        (np.ones((2, 3), np.int32), {"snr_db": 30.0}, {}, "floating"),
    ],
)
def test_bad_input_raises_value_error(weights, state, kwargs, match):
    with pytest.raises(ValueError, match=match):
        quant.WeightQuantizer(**kwargs).calibrate(weights, state)


def test_range_estimator_tracks_an_ema_of_percentiles_under_jit():
    estimator = quant.DynamicRangeEstimator(momentum=0.8, percentile=99.0)
    batches = [RNG.standard_normal(5000).astype(np.float32) * s for s in (1.0, 2.0, 0.5)]
    state = estimator.init()
    update = jax.jit(estimator.update)
    for batch in batches:
        state = update(state, batch)
    p = [np.percentile(np.abs(b), 99.0) for b in batches]
    want = 0.8 * (0.8 * p[0] + 0.2 * p[1]) + 0.2 * p[2]
    assert float(state.range) == pytest.approx(want, rel=1e-4)
    assert int(state.count) == 3
    snr = float(hw.snr(hw.HardwareConfig()))
    assert float(state.noise_std) == pytest.approx(want / math.sqrt(snr), rel=1e-4)
    assert float(state.minimum) == min(b.min() for b in batches) and bool(state.signed)
    non_negative = update(estimator.init(), np.abs(batches[0]))
    assert float(non_negative.minimum) == np.abs(batches[0]).min() and not bool(non_negative.signed)
    with pytest.raises(ValueError, match="momentum"):
        quant.DynamicRangeEstimator(momentum=1.0)


def test_minmax_scale_is_the_row_peak_over_the_top_code_and_traces():
    w = weight_sets()["outliers"]
    reference = np.abs(w).max(axis=1, keepdims=True) / 7.0  # 4 bits: codes −8…7
    np.testing.assert_allclose(quant.minmax_scale(jnp.asarray(w), 4), reference, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(quant.minmax_scale, static_argnums=1)(w, 4), reference, rtol=1e-6)
