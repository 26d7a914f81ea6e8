"""quantized_matmul: exact integer products through the FFI, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumijax import kernels

RNG = np.random.default_rng(7)


def codes(shape, bits, signed, extreme=False):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if extreme:
        return np.full(shape, lo if signed else hi, np.int8 if signed else np.uint8)
    return RNG.integers(lo, hi + 1, shape).astype(np.int8 if signed else np.uint8)


def exact(xr, xi, wr, wi, sx, zx, sw, zw):
    """Dequantize-then-matmul in int64 and float64, rounded once to float32."""
    centre_x = lambda q: q.astype(np.int64) - zx
    centre_w = lambda q: q.astype(np.int64) - zw[:, None]
    if xi is None:
        acc = centre_x(xr) @ centre_w(wr).T
        return (acc * np.float64(sx) * sw.astype(np.float64)).astype(np.float32)
    re = centre_x(xr) @ centre_w(wr).T - centre_x(xi) @ centre_w(wi).T
    im = centre_x(xr) @ centre_w(wi).T + centre_x(xi) @ centre_w(wr).T
    scale = np.float64(sx) * sw.astype(np.float64)
    return (re * scale).astype(np.float32) + 1j * (im * scale).astype(np.float32)


@pytest.mark.parametrize("x_bits,w_bits", [(6, 4), (8, 8), (4, 4), (7, 8), (8, 2), (1, 1)])
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("extreme", [False, True])
def test_equals_dequantize_then_matmul_exactly(x_bits, w_bits, complex_, extreme):
    m, n, k = 13, 11, 97
    xr, xi = codes((m, k), x_bits, False, extreme), codes((m, k), x_bits, False, extreme)
    wr, wi = codes((n, k), w_bits, True, extreme), codes((n, k), w_bits, True, extreme)
    sx = np.float32(0.031)
    sw = RNG.uniform(0.01, 0.2, n).astype(np.float32)
    zx = 0 if extreme else (1 << x_bits) // 2
    zw = np.zeros(n, np.int32) if extreme else RNG.integers(-1, 2, n).astype(np.int32)
    x_codes = (xr, xi) if complex_ else xr
    w_codes = (wr, wi) if complex_ else wr
    got = np.asarray(kernels.quantized_matmul(
        x_codes, w_codes, x_scale=sx, x_bits=x_bits, w_scale=sw, w_bits=w_bits,
        x_zero_point=zx, w_zero_point=zw,
    ))
    want = exact(xr, xi if complex_ else None, wr, wi, sx, zx, sw, zw)
    np.testing.assert_array_equal(got, want)
    if w_bits <= 4:
        packed = tuple(kernels.pack_int4(w) for w in (wr, wi)) if complex_ else kernels.pack_int4(wr)
        got_packed = kernels.quantized_matmul(
            x_codes, packed, x_scale=sx, x_bits=x_bits, w_scale=sw, w_bits=w_bits,
            x_zero_point=zx, w_zero_point=zw, packed=True,
        )
        np.testing.assert_array_equal(got_packed, want)


def test_pack_int4_round_trip_and_layout():
    w = codes((5, 9), 4, True)
    packed = np.asarray(kernels.pack_int4(w))
    assert packed.shape == (5, 5) and packed.dtype == np.uint8
    np.testing.assert_array_equal(kernels.unpack_int4(packed, 9), w)
    assert np.asarray(kernels.pack_int4(np.array([[-1, 7]], np.int8)))[0, 0] == 0x7F


def test_leading_axes_vmap_and_jit():
    x = codes((4, 3, 16), 6, False)
    w = codes((5, 16), 4, True)
    sw = np.full(5, 0.1, np.float32)
    f = lambda x: kernels.quantized_matmul(x, w, x_scale=0.5, x_bits=6, w_scale=sw, w_bits=4)
    want = exact(x.reshape(12, 16), None, w, None, np.float32(0.5), 0, sw, np.zeros(5, np.int32)).reshape(4, 3, 5)
    np.testing.assert_array_equal(f(x), want)
    np.testing.assert_array_equal(jax.jit(jax.vmap(f))(x), want)
    # a batch of weights falls back to one call per weight matrix
    ws = codes((2, 5, 16), 4, True)
    g = jax.vmap(lambda w: kernels.quantized_matmul(x[0], w, x_scale=0.5, x_bits=6, w_scale=sw, w_bits=4))
    for got, w_i in zip(g(ws), ws):
        np.testing.assert_array_equal(got, exact(x[0], None, w_i, None, np.float32(0.5), 0, sw, np.zeros(5, np.int32)))


def test_gradients_reach_the_scales():
    x, w = codes((6, 20), 6, False), codes((4, 20), 4, True)
    sw = RNG.uniform(0.05, 0.2, 4).astype(np.float32)

    def loss(product):
        return lambda sx, sw: jnp.sum(jnp.sin(product(sx, sw)))

    native = lambda sx, sw: kernels.quantized_matmul(x, w, x_scale=sx, x_bits=6, w_scale=sw, w_bits=4)
    dense = lambda sx, sw: sx * (x.astype(np.float32) @ w.astype(np.float32).T) * sw
    got = jax.grad(loss(native), argnums=(0, 1))(np.float32(0.02), sw)
    want = jax.grad(loss(dense), argnums=(0, 1))(np.float32(0.02), sw)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4)


def test_reference_path_matches_when_native_is_disabled(monkeypatch):
    x, w = (codes((7, 33), 6, False), codes((7, 33), 6, False)), (codes((5, 33), 4, True), codes((5, 33), 4, True))
    sw = np.full(5, 0.1, np.float32)
    args = dict(x_scale=0.5, x_bits=6, w_scale=sw, w_bits=4, x_zero_point=3)
    native = np.asarray(kernels.quantized_matmul(x, w, **args))
    monkeypatch.setenv("LUMIJAX_NATIVE", "0")
    np.testing.assert_allclose(kernels.quantized_matmul(x, w, **args), native, rtol=1e-6)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(x_codes=np.zeros((2, 8), np.int32)), TypeError, "x_codes must have dtype uint8"),
        (dict(w_codes=np.zeros((3, 7), np.int8)), ValueError, "x_codes need 8"),
        (dict(w_scale=np.ones(2, np.float32)), ValueError, r"w_scale must have shape \(3,\)"),
        (dict(x_bits=9), ValueError, "1..8"),
        (dict(w_bits=8, packed=True, w_codes=np.zeros((3, 4), np.uint8)), ValueError, "w_bits ≤ 4"),
        (dict(x_codes=np.full((2, 8), 200, np.uint8)), Exception, "activation code 200 exceeds 6 bits"),
        (dict(w_codes=np.full((3, 8), 9, np.int8)), Exception, "weight code 9 is outside 4 bits"),
        (dict(w_scale=np.array([1.0, -1.0, 1.0], np.float32)), Exception, "weight scales must be finite and > 0"),
    ],
)
def test_bad_input_raises(change, error, match):
    args = dict(x_codes=np.zeros((2, 8), np.uint8), w_codes=np.zeros((3, 8), np.int8), x_scale=1.0,
                x_bits=6, w_scale=np.ones(3, np.float32), w_bits=4)
    args.update(change)
    with pytest.raises(error, match=match):
        jax.block_until_ready(kernels.quantized_matmul(args.pop("x_codes"), args.pop("w_codes"), **args))
