"""Native kernels through the XLA FFI, against numpy and the jnp references."""

import shutil
import subprocess
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lumijax import kernels, native

RNG = np.random.default_rng(1234)
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12, np.complex64: 2e-5, np.complex128: 1e-12}


def sample(shape, dtype):
    x = RNG.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * RNG.standard_normal(shape)
    return x.astype(dtype)


def uses_custom_call(fn, *args, target):
    return target in jax.jit(fn).lower(*args).compile().as_text()


# --- the ABI mirror -------------------------------------------------------

STRUCTS = [
    "XLA_FFI_Extension_Base", "XLA_FFI_Api_Version", "XLA_FFI_Error_Create_Args", "XLA_FFI_Buffer",
    "XLA_FFI_ByteSpan", "XLA_FFI_Scalar", "XLA_FFI_Args", "XLA_FFI_Rets", "XLA_FFI_Attrs",
    "XLA_FFI_CallFrame", "XLA_FFI_Metadata", "XLA_FFI_Metadata_Extension", "XLA_FFI_Api",
]


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to read c_api.h")
def test_rust_mirror_matches_the_installed_c_header(tmp_path):
    source = tmp_path / "sizes.c"
    lines = ['#include <stdio.h>', '#include "xla/ffi/api/c_api.h"', "int main(void) {"]
    lines += [f'  printf("{name} %zu\\n", sizeof({name}));' for name in STRUCTS]
    source.write_text("\n".join(lines + ["  return 0;", "}"]))
    binary = tmp_path / "sizes"
    subprocess.run(["cc", "-I", jax.ffi.include_dir(), str(source), "-o", str(binary)], check=True)
    header = dict(line.split() for line in subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.splitlines())
    mirror = native.load().ffi_struct_sizes()
    assert set(mirror) == set(STRUCTS)
    assert {k: int(v) for k, v in header.items()} == mirror


# --- complex GEMM ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize(
    "shape_a,shape_b",
    [((1, 1), (1, 1)), ((7, 13), (13, 5)), ((3, 31, 17), (3, 17, 29)), ((4, 8, 9), (9, 2)),
     ((2, 1, 5, 3), (4, 3, 6)), ((1, 6, 4), (5, 4, 3)), ((130, 257), (257, 190))],
)
def test_matmul_matches_numpy(dtype, shape_a, shape_b):
    a, b = sample(shape_a, dtype), sample(shape_b, dtype)
    with jax.enable_x64(np.dtype(dtype).itemsize in (8, 16) and dtype != np.complex64):
        got = np.asarray(kernels.matmul(a, b))
    want = np.matmul(a.astype(np.complex128), b.astype(np.complex128))
    assert got.dtype == dtype and got.shape == want.shape
    scale = np.abs(a).max() * np.abs(b).max() * shape_a[-1]
    np.testing.assert_allclose(got, want, atol=TOLERANCE[dtype] * scale, rtol=0)


def test_matmul_runs_the_native_kernel():
    a = sample((3, 4, 5), np.complex64)
    assert uses_custom_call(kernels.matmul, a, a.swapaxes(-1, -2), target="lumijax_matmul")


def test_matmul_of_transposed_views():
    a = sample((9, 7), np.complex64)
    b = sample((5, 9), np.complex64)
    got = kernels.matmul(jnp.asarray(a).T, jnp.asarray(b).T)
    np.testing.assert_allclose(got, a.T @ b.T, atol=1e-4)


def test_matmul_promotes_mixed_dtypes():
    a, b = sample((3, 4), np.float32), sample((4, 2), np.complex64)
    got = kernels.matmul(a, b)
    assert got.dtype == jnp.complex64
    np.testing.assert_allclose(got, a @ b, atol=1e-5)


def test_matmul_propagates_nan_and_inf_like_numpy():
    a = sample((4, 6), np.float32)
    b = sample((6, 3), np.float32)
    a[1, 2] = np.nan
    b[0, 2] = np.inf
    got = np.asarray(kernels.matmul(a, b))
    with np.errstate(invalid="ignore"):
        want = a @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
def test_matmul_gradients_match_the_jnp_reference(dtype):
    a, b = sample((2, 5, 4), dtype), sample((4, 3), dtype)
    target = sample((2, 5, 3), dtype)

    def loss(matmul):
        return lambda a, b: jnp.sum(jnp.abs(matmul(a, b) - target) ** 2)

    with jax.enable_x64(dtype == np.complex128):
        got = jax.grad(loss(kernels.matmul), argnums=(0, 1))(a, b)
        want = jax.grad(loss(kernels.matmul_reference), argnums=(0, 1))(a, b)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_matmul_gradients_match_finite_differences():
    a, b = sample((2, 3, 4), np.complex128), sample((1, 4, 2), np.complex128)
    with jax.enable_x64(True):
        check_grads(kernels.matmul, (a, b), order=2, modes=("rev",))


def test_matmul_under_vmap_and_jit():
    a, b = sample((6, 3, 5, 4), np.complex64), sample((4, 2), np.complex64)
    f = jax.jit(jax.vmap(kernels.matmul, in_axes=(0, None)))
    np.testing.assert_allclose(f(a, b), a @ b, atol=1e-4)
    g = jax.jit(jax.vmap(jax.vmap(kernels.matmul, in_axes=(None, 0)), in_axes=(0, None)))
    bs = sample((3, 4, 2), np.complex64)
    np.testing.assert_allclose(g(a[:, 0], bs), np.einsum("vmk,wkn->vwmn", a[:, 0], bs), atol=1e-4)


def test_matmul_folds_rows_and_transposes_b():
    # A matrix b multiplies every row of a (a linear layer), b may come transposed;
    # values and both gradients against numpy / the jnp reference.
    a, w = sample((2, 3, 5, 7), np.float32), sample((7, 4), np.float32)
    assert uses_custom_call(kernels.matmul, a, w, target="lumijax_matmul")
    np.testing.assert_allclose(kernels.matmul(a, w), a @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.matmul(a[0, 0, 0], w), a[0, 0, 0] @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.matmul(a, w.T.copy(), transpose_b=True), a @ w, rtol=1e-5, atol=1e-5)
    keys = sample((2, 3, 6, 7), np.float32)
    np.testing.assert_allclose(kernels.matmul(a, keys, transpose_b=True), a @ keys.swapaxes(-1, -2), rtol=1e-5,
                               atol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))
    for b, f, ref in ((w, kernels.matmul, kernels.matmul_reference),
                      (keys, partial(kernels.matmul, transpose_b=True),
                       lambda a, b: kernels.matmul_reference(a, b.swapaxes(-1, -2)))):
        got = jax.grad(loss(f), argnums=(0, 1))(a, b)
        want = jax.grad(loss(ref), argnums=(0, 1))(a, b)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "a,b,error,match",
    [
        (np.ones(3, np.float32), np.ones((1, 3, 2), np.float32), ValueError, "rank ≥ 2"),
        (np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), ValueError, "inner dimensions differ"),
        (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), ValueError, "inner dimensions differ"),
        (np.ones((2, 3), np.int32), np.ones((3, 2), np.int32), TypeError, "int32"),
        (np.ones((2, 2, 3), np.float32), np.ones((3, 3, 2), np.float32), ValueError, "do not broadcast"),
        (np.ones((0, 3), np.float32), np.ones((3, 2), np.float32), None, None),
    ],
)
def test_matmul_bad_input_raises(a, b, error, match):
    if error is None:  # empty dimensions are valid and give an empty result
        assert kernels.matmul(a, b).shape == (0, 2)
        assert np.all(np.asarray(kernels.matmul(np.ones((2, 0)), np.ones((0, 3)))) == 0)
        return
    with pytest.raises(error, match=match):
        kernels.matmul(a, b)


def test_ffi_error_path_reports_through_jax():
    call = jax.ffi.ffi_call("lumijax_matmul", jax.ShapeDtypeStruct((2, 2), jnp.float32))
    with pytest.raises(Exception, match="inner dimensions differ"):
        jax.block_until_ready(call(jnp.ones((2, 3)), jnp.ones((4, 2)), op_a=np.int64(0), op_b=np.int64(0)))
    with pytest.raises(Exception, match="op_a must be 0"):
        jax.block_until_ready(call(jnp.ones((2, 3)), jnp.ones((3, 2)), op_a=np.int64(7), op_b=np.int64(0)))
    call = jax.ffi.ffi_call("lumijax_matmul", jax.ShapeDtypeStruct((2, 2), jnp.int32))
    with pytest.raises(Exception, match="matmul takes float32, float64, complex64 or complex128, got int32"):
        jax.block_until_ready(call(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2), jnp.int32), op_a=np.int64(0), op_b=np.int64(0)))


def test_reference_path_when_native_is_disabled(monkeypatch):
    a = sample((3, 4), np.complex64)
    monkeypatch.setenv("LUMIJAX_NATIVE", "0")
    assert not uses_custom_call(kernels.matmul, a, a.T, target="lumijax_matmul")
    np.testing.assert_allclose(kernels.matmul(a, a.T), a @ a.T, atol=1e-5)


# --- fused causal softmax -------------------------------------------------

@pytest.mark.parametrize(
    "shape,offset", [((2, 3, 5, 5), 0), ((1, 2, 4, 11), 7), ((3, 1, 17, 33), 16), ((1, 1, 1, 1), 0), ((2, 64, 64), 0), ((1, 3, 9), 50)]
)
def test_softmax_matches_reference_and_masks_exactly(shape, offset):
    x = sample(shape, np.float32) * 4
    scale = 0.7
    got = np.asarray(kernels.causal_softmax(x, scale, offset))
    want = np.asarray(kernels.causal_softmax_reference(x, scale, offset))
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-7)
    t, s = shape[-2:]
    visible = np.arange(s)[None, :] <= np.arange(t)[:, None] + offset
    assert np.all(got[..., ~visible] == 0.0)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_softmax_runs_the_native_kernel():
    x = sample((2, 4, 4), np.float32)
    assert uses_custom_call(lambda x: kernels.causal_softmax(x, 1.0), x, target="lumijax_causal_softmax")
    assert uses_custom_call(
        jax.grad(lambda x: jnp.sum(kernels.causal_softmax(x, 1.0) ** 2)), x, target="lumijax_causal_softmax_bwd"
    )


def test_softmax_is_stable_for_large_logits():
    x = np.array([[[1000.0, 0.0], [1000.0, 999.0]]], np.float32)
    got = np.asarray(kernels.causal_softmax(x, 1.0))
    np.testing.assert_allclose(got, [[[1.0, 0.0], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))]]], rtol=1e-6)


def test_softmax_nan_and_inf_propagate_as_in_the_reference():
    x = sample((1, 4, 4), np.float32)
    x[0, 1, 0] = np.nan
    x[0, 2, 1] = np.inf
    x[0, 3, 3] = -np.inf
    got = np.asarray(kernels.causal_softmax(x, 1.0))
    want = np.asarray(kernels.causal_softmax_reference(x, 1.0))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-7)
    assert got[0, 3, 3] == 0.0


def test_softmax_gradient_matches_the_reference_and_finite_differences():
    x = sample((2, 3, 6, 9), np.float32)
    weights = sample((2, 3, 6, 9), np.float32)

    def loss(softmax):
        return lambda x: jnp.sum(jnp.sin(softmax(x, 0.5, 3)) * weights)

    got = jax.grad(loss(kernels.causal_softmax))(x)
    want = jax.grad(loss(kernels.causal_softmax_reference))(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    check_grads(lambda x: kernels.causal_softmax(x, 0.5, 3), (x,), order=1, modes=("rev",), atol=5e-3, rtol=5e-3)


def test_softmax_under_vmap_and_jit():
    x = sample((5, 2, 7, 7), np.float32)
    f = jax.jit(jax.vmap(lambda x: kernels.causal_softmax(x, 0.3, 0)))
    np.testing.assert_allclose(f(x), kernels.causal_softmax_reference(x, 0.3, 0), rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize(
    "x,scale,offset,error,match",
    [
        (np.ones(4, np.float32), 1.0, 0, ValueError, "rank ≥ 2"),
        (np.ones((2, 2), np.float16), 1.0, 0, TypeError, "float32"),
        (np.ones((2, 2), np.float32), float("nan"), 0, ValueError, "finite"),
        (np.ones((2, 2), np.float32), 1.0, -1, ValueError, "offset must be ≥ 0"),
    ],
)
def test_softmax_bad_input_raises(x, scale, offset, error, match):
    with pytest.raises(error, match=match):
        kernels.causal_softmax(x, scale, offset)


# --- detector noise ---------------------------------------------------------

def test_standard_normal_is_standard_normal():
    draws = np.asarray(kernels.standard_normal(jax.random.key(3), (500, 400)), np.float64).ravel()
    n = draws.size
    assert abs(draws.mean()) < 5 / np.sqrt(n)
    assert abs(draws.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(draws ** 4) / draws.var() ** 2 - 3) < 0.05  # kurtosis
    assert abs(np.mean(np.abs(draws) > 2) - 0.0455) < 0.002
    # neighbouring draws, and those of neighbouring 4096-blocks, are uncorrelated
    assert abs(np.mean(draws[1:] * draws[:-1])) < 5 / np.sqrt(n)
    assert abs(np.mean(draws[4096:] * draws[:-4096])) < 5 / np.sqrt(n)


def test_standard_normal_follows_its_key_under_jit_and_vmap():
    key = jax.random.key(7)
    a = kernels.standard_normal(key, (3, 5))
    np.testing.assert_array_equal(a, jax.jit(kernels.standard_normal, static_argnums=1)(key, (3, 5)))
    assert not np.array_equal(a, kernels.standard_normal(jax.random.key(8), (3, 5)))
    keys = jax.random.split(key, 4)
    batched = jax.vmap(lambda k: kernels.standard_normal(k, (3, 5)))(keys)
    for k, row in zip(keys, batched):
        np.testing.assert_array_equal(row, kernels.standard_normal(k, (3, 5)))
    assert kernels.standard_normal(key, (2,), jnp.float32).dtype == jnp.float32
    with jax.enable_x64(True):
        assert kernels.standard_normal(key, (2,), jnp.float64).dtype == jnp.float64
    assert uses_custom_call(lambda k: kernels.standard_normal(k, (3,)), key, target="lumijax_standard_normal")
    # the draws are constants for differentiation: d/dσ Σ σ·ε = Σ ε
    grad = jax.grad(lambda sigma: jnp.sum(sigma * kernels.standard_normal(key, (3,))))(1.0)
    np.testing.assert_allclose(grad, jnp.sum(kernels.standard_normal(key, (3,))), rtol=1e-6)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.standard_normal(key, (2,), jnp.int32)


def test_standard_normal_without_the_native_kernel(monkeypatch):
    monkeypatch.setenv("LUMIJAX_NATIVE", "0")
    key = jax.random.key(1)
    assert not uses_custom_call(lambda k: kernels.standard_normal(k, (3,)), key, target="lumijax_standard_normal")
    draws = np.asarray(kernels.standard_normal(key, (20000,)))
    assert abs(draws.mean()) < 0.05 and abs(draws.std() - 1) < 0.05


# --- 2-D convolution --------------------------------------------------------
# Values and gradients of the lowering on many geometries: test_conv.py.

CONV = dict(kernel_size=(3, 2), strides=(2, 1), padding=((1, 0), (0, 1)))


def conv_reference(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel.reshape(3, 2, x.shape[-1], -1), CONV["strides"], CONV["padding"],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)


def test_conv2d_runs_the_native_kernels_forward_and_backward():
    x, kernel = sample((2, 7, 6, 3), np.float32), sample((18, 4), np.float32)
    loss = lambda x, k: jnp.sum(kernels.conv2d(x, k, **CONV) ** 2)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    for target in ("lumijax_conv2d", "lumijax_conv2d_backward"):
        assert target in compiled
    check_grads(lambda x, k: kernels.conv2d(x, k, **CONV), (x, kernel), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_conv2d_in_float64_and_without_the_native_kernel(monkeypatch):
    x, kernel = sample((2, 7, 6, 3), np.float64), sample((18, 4), np.float64)
    with jax.enable_x64(True):
        assert not uses_custom_call(lambda x, k: kernels.conv2d(x, k, **CONV), x, kernel, target="lumijax_conv2d")
        np.testing.assert_allclose(kernels.conv2d(x, kernel, **CONV), conv_reference(x, kernel), rtol=1e-12, atol=1e-12)
    x, kernel = x.astype(np.float32), kernel.astype(np.float32)
    monkeypatch.setenv("LUMIJAX_NATIVE", "0")
    assert not uses_custom_call(lambda x, k: kernels.conv2d(x, k, **CONV), x, kernel, target="lumijax_conv2d")
    np.testing.assert_allclose(kernels.conv2d(x, kernel, **CONV), conv_reference(x, kernel), rtol=1e-5, atol=1e-5)


def test_conv2d_under_vmap_and_nan_propagation():
    x, kernel = sample((3, 2, 5, 4, 2), np.float32), sample((12, 3), np.float32)
    batched = jax.jit(jax.vmap(lambda x: kernels.conv2d(x, kernel, **CONV)))(x)
    for i in range(3):
        np.testing.assert_allclose(batched[i], conv_reference(x[i], kernel), rtol=1e-5, atol=1e-5)
    poisoned = x[0].copy()
    poisoned[1, 2, 3, 0] = np.nan
    y = np.asarray(kernels.conv2d(poisoned, kernel, **CONV))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(np.asarray(conv_reference(poisoned, kernel))))
    assert np.isnan(y).any() and not np.isnan(y[0]).any()


@pytest.mark.parametrize(
    "x_shape,k_shape,geometry,error,match",
    [
        ((7, 6, 3), (18, 4), CONV, ValueError, "NHWC"),
        ((1, 7, 6, 3), (17, 4), CONV, ValueError, r"\(18, C_out\)"),
        ((1, 1, 1, 3), (18, 4), dict(CONV, padding=((0, 0), (0, 0))), ValueError, "smaller than"),
        ((1, 7, 6, 3), (18, 4), dict(CONV, strides=(0, 1)), ValueError, "≥ 1"),
        ((1, 7, 6, 3), (18, 4), dict(CONV, padding=((-1, 0), (0, 0))), ValueError, "≥ 0"),
    ],
)
def test_conv2d_bad_input_raises(x_shape, k_shape, geometry, error, match):
    with pytest.raises(error, match=match):
        kernels.conv2d(jnp.ones(x_shape), jnp.ones(k_shape), **geometry)
    with pytest.raises(TypeError, match="floating-point"):
        kernels.conv2d(jnp.ones((1, 7, 6, 3), jnp.int32), jnp.ones((18, 4), jnp.int32), **CONV)


def test_conv2d_ffi_checks_its_operands():
    attrs = {name: np.int64(v) for name, v in dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_top=1,
                                                   pad_bottom=1, pad_left=1, pad_right=1).items()}
    call = jax.ffi.ffi_call("lumijax_conv2d", jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32))
    with pytest.raises(Exception, match="holds 26 elements"):
        jax.block_until_ready(call(jnp.ones((1, 4, 4, 3)), jnp.ones((13, 2)), **attrs))
    with pytest.raises(Exception, match=r"output must be \(1, 5, 4, cout\), got \[1, 4, 4, 2\]"):
        jax.block_until_ready(call(jnp.ones((1, 5, 4, 3)), jnp.ones((27, 2)), **attrs))
    with pytest.raises(Exception, match="smaller than"):
        jax.block_until_ready(call(jnp.ones((1, 4, 4, 3)), jnp.ones((27, 2)), **dict(attrs, kernel_h=np.int64(9))))
    with pytest.raises(Exception, match="must be ≥ 0"):
        jax.block_until_ready(call(jnp.ones((1, 4, 4, 3)), jnp.ones((27, 2)), **dict(attrs, pad_top=np.int64(-1))))
