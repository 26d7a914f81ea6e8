"""The native kernels as differentiable JAX functions.

This is the only module that knows the XLA FFI. At import it registers the
handlers of ``lumijax._native`` as CPU custom-call targets; each public
function lowers to the native kernel on CPU and to its pure-jnp reference on
any other platform (``jax.lax.platform_dependent``), or everywhere when the
environment sets ``LUMIJAX_NATIVE=0``. Every function works under ``jit``,
``vmap`` and ``grad``; gradients follow JAX's convention for complex
numbers (the transpose of the linear map, not its adjoint).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lumijax import native

Array = jax.Array

_MATMUL_DTYPES = (jnp.float32, jnp.float64, jnp.complex64, jnp.complex128)
_IDENTITY, _TRANSPOSE = 0, 1


def native_enabled() -> bool:
    """Whether CPU calls go to the Rust kernels (``LUMIJAX_NATIVE`` ≠ ``0``)."""
    return os.environ.get("LUMIJAX_NATIVE", "1") != "0"


def _register() -> None:
    for name, capsule in native.load().ffi_handlers().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")


if native_enabled():
    _register()


def _sharded(x: Array) -> bool:
    """Whether ``x``'s type splits an axis over a mesh (explicit sharding)."""
    spec = getattr(jax.typeof(x).sharding, "spec", ())
    return any(axis is not None for axis in spec)


def _dispatch(native_impl: Callable, reference_impl: Callable, *args: Array) -> Array:
    """The native kernel on CPU, the reference elsewhere, when disabled, or
    for operands split over an explicit mesh (XLA partitions the reference;
    a kernel sees one device's whole arrays)."""
    if not native_enabled() or any(_sharded(x) for x in args):
        return reference_impl(*args)
    return jax.lax.platform_dependent(*args, cpu=native_impl, default=reference_impl)


# ---------------------------------------------------------------------------
# Batched matrix product (real and complex)


def matmul_reference(a: Array, b: Array) -> Array:
    """``a @ b`` in jnp at full precision: the reference for :func:`matmul`."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _matmul_call(a: Array, b: Array, op_a: int, op_b: int) -> Array:
    """``op(a) @ op(b)`` on the native GEMM.

    The operands get the same number of batch axes first, so that the axis
    ``vmap`` prepends lines up in the kernel's right-aligned broadcasting.
    """
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.reshape((1,) * (len(batch) + 2 - a.ndim) + a.shape)
    b = b.reshape((1,) * (len(batch) + 2 - b.ndim) + b.shape)
    m = a.shape[-1] if op_a else a.shape[-2]
    n = b.shape[-2] if op_b else b.shape[-1]
    out = jax.ShapeDtypeStruct((*batch, m, n), a.dtype)
    call = jax.ffi.ffi_call("lumijax_matmul", out, vmap_method="broadcast_all")
    return call(a, b, op_a=np.int64(op_a), op_b=np.int64(op_b))


def _product_reference(a: Array, b: Array, op_a: int, op_b: int) -> Array:
    a = jnp.swapaxes(a, -1, -2) if op_a else a
    b = jnp.swapaxes(b, -1, -2) if op_b else b
    return matmul_reference(a, b)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _product(a: Array, b: Array, op_a: int, op_b: int) -> Array:
    """``op(a) @ op(b)`` with ``op`` identity (0) or transpose (1)."""
    return _dispatch(
        partial(_matmul_call, op_a=op_a, op_b=op_b),
        partial(_product_reference, op_a=op_a, op_b=op_b),
        a,
        b,
    )


def _product_fwd(a: Array, b: Array, op_a: int, op_b: int):
    return _product(a, b, op_a, op_b), (a, b)


# Cotangents of C = op(A)·op(B) are again such products (JAX transposes,
# without conjugation), so every order of derivative runs on the kernel:
# (op_a, op_b) -> ((dA operands and ops), (dB operands and ops)).
_COTANGENTS = {
    (_IDENTITY, _IDENTITY): (("g", "b", _IDENTITY, _TRANSPOSE), ("a", "g", _TRANSPOSE, _IDENTITY)),
    (_IDENTITY, _TRANSPOSE): (("g", "b", _IDENTITY, _IDENTITY), ("g", "a", _TRANSPOSE, _IDENTITY)),
    (_TRANSPOSE, _IDENTITY): (("b", "g", _IDENTITY, _TRANSPOSE), ("a", "g", _IDENTITY, _IDENTITY)),
    (_TRANSPOSE, _TRANSPOSE): (("b", "g", _TRANSPOSE, _TRANSPOSE), ("g", "a", _TRANSPOSE, _TRANSPOSE)),
}


def _product_bwd(op_a: int, op_b: int, residuals, grad: Array):
    a, b = residuals
    operands = {"a": a, "b": b, "g": grad}
    (la, ra, ola, ora), (lb, rb, olb, orb) = _COTANGENTS[(op_a, op_b)]
    grad_a = _product(operands[la], operands[ra], ola, ora)
    grad_b = _product(operands[lb], operands[rb], olb, orb)
    return _unbroadcast(grad_a, a.shape), _unbroadcast(grad_b, b.shape)


_product.defvjp(_product_fwd, _product_bwd)


def _unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    """Sums ``grad`` over the batch axes that were broadcast to reach it."""
    lead = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(lead))) if lead else grad
    axes = tuple(i for i, size in enumerate(shape[:-2]) if size == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def _check_matmul_operands(a: Array, b: Array, transpose_b: bool) -> tuple[Array, Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands of rank ≥ 2, got shapes {a.shape} and {b.shape}")
    inner = b.shape[-1] if transpose_b else b.shape[-2]
    if a.shape[-1] != inner:
        raise ValueError(
            f"matmul: inner dimensions differ, a is {a.shape} and b{'ᵀ' if transpose_b else ''} is {b.shape} "
            f"({a.shape[-1]} ≠ {inner})"
        )
    dtype = jnp.promote_types(a.dtype, b.dtype)
    if dtype not in _MATMUL_DTYPES:
        raise TypeError(f"matmul takes float32, float64, complex64 or complex128 operands, got {a.dtype} and {b.dtype}")
    try:
        jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ValueError(f"matmul: batch axes {a.shape[:-2]} and {b.shape[:-2]} do not broadcast") from err
    return a.astype(dtype), b.astype(dtype)


@partial(jax.jit, static_argnames="transpose_b")  # eager calls compile once per shape
def matmul(a: Array, b: Array, *, transpose_b: bool = False) -> Array:
    """Batched ``a @ b`` (or ``a @ bᵀ`` over the last two axes) on the
    native GEMM.

    A matrix ``b`` multiplies every row of ``a`` in one product (``a``'s
    leading axes fold into its rows, as in a linear layer); otherwise the
    batch axes broadcast as in ``jnp.matmul`` and broadcast axes are strided
    over by the kernel, never copied. Gradients are products of the same
    kernel.

    Args:
      a: shape ``(*batch_a, m, k)``, or ``(..., k)`` when ``b`` is a
        matrix; float32, float64, complex64 or complex128.
      b: shape ``(*batch_b, k, n)``, or ``(*batch_b, n, k)`` with
        ``transpose_b``.

    Returns:
      ``(*batch, m, n)`` in the promoted dtype of ``a`` and ``b``.

    Raises:
      ValueError: rank < 2, mismatched inner dimensions or batch axes.
      TypeError: a dtype other than the four above.
    """
    if jnp.ndim(b) == 2 and jnp.ndim(a) not in (0, 2):
        a = jnp.asarray(a)
        rows = matmul(a.reshape(-1, a.shape[-1]), b, transpose_b=transpose_b)
        return rows.reshape(a.shape[:-1] + rows.shape[-1:])
    a, b = _check_matmul_operands(a, b, transpose_b)
    if _sharded(a) or _sharded(b):  # XLA's product, partitioned and differentiated by JAX
        return jnp.matmul(a, jnp.swapaxes(b, -1, -2) if transpose_b else b)
    return _product(a, b, _IDENTITY, _TRANSPOSE if transpose_b else _IDENTITY)


# ---------------------------------------------------------------------------
# Fused causal-mask softmax


def causal_softmax_reference(x: Array, scale: float, offset: int = 0) -> Array:
    """``softmax(scale·x + causal mask)`` in jnp; masked entries are exactly 0.

    Query ``t`` (axis −2) sees keys ``0..=t + offset`` (axis −1).
    """
    queries, keys = x.shape[-2:]
    visible = jnp.arange(keys)[None, :] <= jnp.arange(queries)[:, None] + offset
    z = jnp.where(visible, scale * x, -jnp.inf)
    return jnp.where(visible, jax.nn.softmax(z, axis=-1), 0.0)


# The softmax may overwrite its logits (and the backward its cotangent):
# XLA then reuses that buffer when nothing else reads it, instead of
# allocating the result (for attention logits, hundreds of MB).
def _softmax_call(x: Array, scale: float, offset: int) -> Array:
    call = jax.ffi.ffi_call(
        "lumijax_causal_softmax",
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        vmap_method="broadcast_all",
        input_output_aliases={0: 0},
    )
    return call(x, scale=np.float32(scale), offset=np.int64(offset))


def _softmax_bwd_call(p: Array, dp: Array, scale: float, offset: int) -> Array:
    call = jax.ffi.ffi_call(
        "lumijax_causal_softmax_bwd",
        jax.ShapeDtypeStruct(p.shape, p.dtype),
        vmap_method="broadcast_all",
        input_output_aliases={1: 0},
    )
    return call(p, dp, scale=np.float32(scale), offset=np.int64(offset))


def _softmax_bwd_reference(p: Array, dp: Array, scale: float) -> Array:
    return scale * p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _causal_softmax(x: Array, scale: float, offset: int) -> Array:
    return _dispatch(
        partial(_softmax_call, scale=scale, offset=offset),
        partial(causal_softmax_reference, scale=scale, offset=offset),
        x,
    )


def _causal_softmax_fwd(x: Array, scale: float, offset: int):
    p = _causal_softmax(x, scale, offset)
    return p, p


def _causal_softmax_bwd(scale: float, offset: int, p: Array, dp: Array):
    dx = _dispatch(
        partial(_softmax_bwd_call, scale=scale, offset=offset),
        partial(_softmax_bwd_reference, scale=scale),
        p,
        dp,
    )
    return (dx,)


_causal_softmax.defvjp(_causal_softmax_fwd, _causal_softmax_bwd)


def causal_softmax(x: Array, scale: float, offset: int = 0) -> Array:
    """Fused ``softmax(scale·x + causal mask)`` over the last axis.

    Args:
      x: attention logits, shape ``(…, T, S)``, float32.
      scale: logit scale, e.g. ``1/√d_head`` (a static Python float).
      offset: keys visible to query 0 beyond key 0; ``S − T`` when the first
        ``S − T`` keys are a cache of earlier positions (a static int ≥ 0).

    Returns:
      Probabilities of the shape of ``x``; masked entries are exact zeros.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"causal_softmax needs x of rank ≥ 2 (…, T, S), got shape {x.shape}")
    if x.dtype != jnp.float32:
        raise TypeError(f"causal_softmax takes float32 logits, got {x.dtype}")
    scale, offset = float(scale), int(offset)
    if not math.isfinite(scale):
        raise ValueError(f"causal_softmax: scale must be finite, got {scale}")
    if offset < 0:
        raise ValueError(f"causal_softmax: offset must be ≥ 0, got {offset}")
    return _causal_softmax(x, scale, offset)


# ---------------------------------------------------------------------------
# Quantized (integer-code) matrix product


def pack_int4(codes: Array) -> Array:
    """Packs signed 4-bit codes two to a byte, low nibble first, along the last axis.

    Args:
      codes: int8 codes in ``-8..7``, shape ``(..., k)``.

    Returns:
      uint8, shape ``(..., ⌈k/2⌉)``; an odd ``k`` leaves the last high nibble 0.
    """
    codes = jnp.asarray(codes, jnp.int8)
    if codes.shape[-1] % 2:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    nibbles = (codes.astype(jnp.uint8) & 0x0F).reshape(*codes.shape[:-1], -1, 2)
    return nibbles[..., 0] | (nibbles[..., 1] << 4)


def unpack_int4(packed: Array, k: int) -> Array:
    """Inverse of :func:`pack_int4`: ``(..., ⌈k/2⌉)`` uint8 to ``(..., k)`` int8."""
    packed = jnp.asarray(packed, jnp.uint8)
    nibbles = jnp.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return ((nibbles[..., :k].astype(jnp.int8) << 4) >> 4).astype(jnp.int8)


def quantized_matmul_reference(
    x_codes: Array, w_codes: Array, x_scale: Array, x_zero_point: int, w_scale: Array, w_zero_point: Array
) -> Array:
    """Dequantize-then-matmul in jnp, with exact int32 sums (``k < 65 793``).

    ``x_codes`` ``(parts, m, k)`` uint8, ``w_codes`` ``(parts, n, k)`` int8:
    ``y = sx·sw[n]·Σ_k (qx − zx)(qw[n] − zw[n])``, complex when ``parts`` = 2.
    """
    x = x_codes.astype(jnp.int32) - x_zero_point
    w = w_codes.astype(jnp.int32) - w_zero_point[None, :, None]
    dot = partial(jnp.matmul, preferred_element_type=jnp.int32)
    scale = x_scale * w_scale
    if x.shape[0] == 1:
        return dot(x[0], w[0].T).astype(jnp.float32) * scale
    re = dot(x[0], w[0].T) - dot(x[1], w[1].T)
    im = dot(x[0], w[1].T) + dot(x[1], w[0].T)
    return jax.lax.complex(re.astype(jnp.float32) * scale, im.astype(jnp.float32) * scale)


def _quantized_call(x_codes, w_codes, x_scale, w_scale, w_zero_point, *, x_bits, w_bits, x_zero_point, packed):
    parts, m, _ = x_codes.shape
    n = w_codes.shape[1]
    dtype = jnp.complex64 if parts == 2 else jnp.float32
    call = jax.ffi.ffi_call("lumijax_quantized_matmul", jax.ShapeDtypeStruct((m, n), dtype))
    return call(
        x_codes, w_codes, x_scale, w_scale, w_zero_point,
        x_bits=np.int64(x_bits), w_bits=np.int64(w_bits),
        x_zero_point=np.int64(x_zero_point), packed=np.int64(packed),
    )


def _quantized_dispatch(x_codes, w_codes, x_scale, w_scale, w_zero_point, static):
    k = x_codes.shape[-1]

    def reference(x_codes, w_codes, x_scale, w_scale, w_zero_point):
        w = unpack_int4(w_codes, k) if static["packed"] else w_codes
        return quantized_matmul_reference(x_codes, w, x_scale, static["x_zero_point"], w_scale, w_zero_point)

    return _dispatch(partial(_quantized_call, **static), reference, x_codes, w_codes, x_scale, w_scale, w_zero_point)


def _quantized_batched(static):
    """The product with a batching rule: a batch of activations is folded into m."""

    @jax.custom_batching.custom_vmap
    def product(x_codes, w_codes, x_scale, w_scale, w_zero_point):
        return _quantized_dispatch(x_codes, w_codes, x_scale, w_scale, w_zero_point, static)

    @product.def_vmap
    def rule(axis_size, in_batched, x_codes, w_codes, x_scale, w_scale, w_zero_point):
        x_b, *rest_b = in_batched
        if not any(rest_b):  # fold the batch axis into the rows: one call
            if not x_b:
                out = product(x_codes, w_codes, x_scale, w_scale, w_zero_point)
                return jnp.broadcast_to(out, (axis_size, *out.shape)), True
            parts, m, k = x_codes.shape[1:]
            folded = jnp.moveaxis(x_codes, 0, 1).reshape(parts, axis_size * m, k)
            out = product(folded, w_codes, x_scale, w_scale, w_zero_point)
            return out.reshape(axis_size, m, -1), True
        operands = [
            a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, batched in zip((x_codes, w_codes, x_scale, w_scale, w_zero_point), in_batched)
        ]
        return jax.lax.map(lambda args: product(*args), tuple(operands)), True

    return product


def _quantized_product(x_codes, w_codes, x_scale, w_scale, w_zero_point, static: tuple) -> Array:
    return _quantized_batched(dict(static))(x_codes, w_codes, x_scale, w_scale, w_zero_point)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _quantized(x_codes, w_codes, x_scale, w_scale, w_zero_point, static):
    return _quantized_product(x_codes, w_codes, x_scale, w_scale, w_zero_point, static)


def _quantized_fwd(x_codes, w_codes, x_scale, w_scale, w_zero_point, static):
    y = _quantized_product(x_codes, w_codes, x_scale, w_scale, w_zero_point, static)
    return y, (y, x_codes, w_codes, x_scale, w_scale, w_zero_point)


def _quantized_bwd(static, residuals, grad):
    y, x_codes, w_codes, x_scale, w_scale, w_zero_point = residuals
    # y is linear in each scale: y = (y / (sx·sw))·sx·sw.
    unit = y / (x_scale * w_scale)
    _, vjp = jax.vjp(lambda sx, sw: unit * (sx * sw), x_scale, w_scale)
    grad_x_scale, grad_w_scale = vjp(grad)
    zeros = [np.zeros(a.shape, jax.dtypes.float0) for a in (x_codes, w_codes, w_zero_point)]
    return zeros[0], zeros[1], grad_x_scale, grad_w_scale, zeros[2]


_quantized.defvjp(_quantized_fwd, _quantized_bwd)


def _as_parts(codes, dtype, name: str) -> Array:
    parts = [jnp.asarray(c) for c in (codes if isinstance(codes, (tuple, list)) else (codes,))]
    if len(parts) not in (1, 2) or any(p.shape != parts[0].shape for p in parts):
        raise ValueError(f"{name} must be one array (real) or a pair of equal-shape arrays (complex)")
    for p in parts:
        if p.dtype != dtype:
            raise TypeError(f"{name} must have dtype {jnp.dtype(dtype).name}, got {p.dtype}")
    return jnp.stack(parts)


def quantized_matmul(
    x_codes: Array | tuple[Array, Array],
    w_codes: Array | tuple[Array, Array],
    *,
    x_scale: Array | float,
    x_bits: int,
    w_scale: Array,
    w_bits: int,
    x_zero_point: int = 0,
    w_zero_point: Array | None = None,
    packed: bool = False,
) -> Array:
    """Exact integer product of activation and weight codes, rescaled once.

    ``y[..., n] = sx·sw[n]·Σ_k (qx[..., k] − zx)·(qw[n, k] − zw[n])``, with
    the sum exact in integers and one rounding to float32; complex when the
    codes come as (real, imaginary) pairs: ``y = x·wᵀ`` for
    ``x = sx·(qx_re − zx) + i·sx·(qx_im − zx)`` and likewise ``w``.
    Gradients flow to ``x_scale`` and ``w_scale`` (the codes are integers).

    Args:
      x_codes: uint8 DAC codes in ``0..2^x_bits``, shape ``(..., k)``, or a
        (real, imaginary) pair.
      w_codes: int8 codes in ``−2^(w_bits−1)..2^(w_bits−1)``, shape
        ``(n, k)``, or with ``packed=True`` uint8 ``(n, ⌈k/2⌉)`` from
        :func:`pack_int4` (``w_bits ≤ 4``); or a pair.
      x_scale: activation scale (positive scalar).
      x_bits, w_bits: code widths, 1..8.
      w_scale: per-output-channel weight scales, shape ``(n,)``.
      x_zero_point: activation zero point (static int).
      w_zero_point: per-channel weight zero points, shape ``(n,)``; default 0.

    Returns:
      ``(..., n)`` float32, or complex64 for complex codes.
    """
    x = _as_parts(x_codes, jnp.uint8, "x_codes")
    w = _as_parts(w_codes, jnp.uint8 if packed else jnp.int8, "w_codes")
    if x.shape[0] != w.shape[0]:
        raise ValueError("x_codes and w_codes must both be real or both complex")
    if w.ndim != 3:
        raise ValueError(f"w_codes must have shape (n, k), got {w.shape[1:]}")
    if x.ndim < 2:
        raise ValueError("x_codes must have at least one axis (k)")
    k, n = x.shape[-1], w.shape[1]
    stored_k = -(-k // 2) if packed else k
    if w.shape[2] != stored_k:
        raise ValueError(f"w_codes rows hold {w.shape[2]} values, x_codes need {stored_k} (k = {k}, packed={packed})")
    if not (1 <= x_bits <= 8 and 1 <= w_bits <= 8) or (packed and w_bits > 4):
        raise ValueError(f"x_bits and w_bits must be 1..8 (w_bits ≤ 4 when packed), got {x_bits}, {w_bits}")
    w_scale = jnp.asarray(w_scale, jnp.float32)
    if w_scale.shape != (n,):
        raise ValueError(f"w_scale must have shape ({n},), got {w_scale.shape}")
    w_zero_point = jnp.zeros(n, jnp.int32) if w_zero_point is None else jnp.asarray(w_zero_point, jnp.int32)
    if w_zero_point.shape != (n,):
        raise ValueError(f"w_zero_point must have shape ({n},), got {w_zero_point.shape}")
    lead = x.shape[1:-1]
    x = x.reshape(x.shape[0], -1, k)
    static = (("packed", bool(packed)), ("w_bits", int(w_bits)), ("x_bits", int(x_bits)), ("x_zero_point", int(x_zero_point)))
    y = _quantized(x, w, jnp.asarray(x_scale, jnp.float32), w_scale, w_zero_point, static)
    return y.reshape(*lead, n)


# ---------------------------------------------------------------------------
# 2-D convolution

#: ``(kernel_size, strides, padding)``: ``(kh, kw)``, ``(sh, sw)`` and
#: ``((top, bottom), (left, right))``.
ConvGeometry = tuple[tuple[int, int], tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]


def _conv_attributes(geometry: ConvGeometry) -> dict:
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = geometry
    values = dict(kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
                  pad_top=top, pad_bottom=bottom, pad_left=left, pad_right=right)
    return {name: np.int64(v) for name, v in values.items()}


def _conv_reference(x: Array, kernel: Array, geometry: ConvGeometry) -> Array:
    kernel_size, strides, padding = geometry
    return jax.lax.conv_general_dilated(
        x, kernel.reshape(*kernel_size, x.shape[-1], -1), strides, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
    )


def _conv_call(target: str, operands: tuple[Array, ...], out, geometry: ConvGeometry):
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*operands, **_conv_attributes(geometry))


def _conv_dispatch(native_impl: Callable, reference_impl: Callable, *args: Array) -> Array:
    """As :func:`_dispatch`, with the reference for anything but float32."""
    if any(a.dtype != jnp.float32 for a in args):
        return reference_impl(*args)
    return _dispatch(native_impl, reference_impl, *args)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x: Array, kernel: Array, geometry: ConvGeometry) -> Array:
    def native_impl(x, kernel):
        y = jax.eval_shape(partial(_conv_reference, geometry=geometry), x, kernel)
        return _conv_call("lumijax_conv2d", (x, kernel), y, geometry)

    return _conv_dispatch(native_impl, partial(_conv_reference, geometry=geometry), x, kernel)


def _conv2d_fwd(x: Array, kernel: Array, geometry: ConvGeometry):
    return _conv2d(x, kernel, geometry), (x, kernel)


def _conv2d_bwd(geometry: ConvGeometry, residuals, dy: Array):
    """``(dx, dk)`` in one native call: the two products run one after the
    other on all cores rather than side by side."""

    def reference(x, kernel, dy):
        return tuple(jax.vjp(partial(_conv_reference, geometry=geometry), x, kernel)[1](dy))

    def native_impl(x, kernel, dy):
        out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))
        return tuple(_conv_call("lumijax_conv2d_backward", (x, kernel, dy), out, geometry))

    return _conv_dispatch(native_impl, reference, *residuals, dy)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(
    x: Array,
    kernel: Array,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> Array:
    """The convolution of NHWC images ``x`` ``(N, H, W, C)`` with ``kernel``
    ``(kh·kw·C, C_out)`` (the ``(kh, kw, C, C_out)`` kernel flattened, ``C``
    fastest): ``(N, H', W', C_out)``.

    On CPU in float32 the native im2col kernels compute it and both
    gradients (patch blocks filled and multiplied in cache, all cores);
    elsewhere, and for other dtypes, ``lax.conv_general_dilated``.

    Args:
      kernel_size: ``(kh, kw)`` taps.
      strides: ``(sh, sw)`` pixels.
      padding: zero padding ``((top, bottom), (left, right))`` pixels.
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    geometry = (tuple(int(v) for v in kernel_size), tuple(int(v) for v in strides),
                tuple(tuple(int(v) for v in pair) for pair in padding))
    (kh, kw), (sh, sw), pads = geometry
    if x.ndim != 4:
        raise ValueError(f"conv2d takes NHWC images (4 axes), got shape {x.shape}")
    if min(kh, kw, sh, sw) < 1 or min(v for pair in pads for v in pair) < 0:
        raise ValueError(f"conv2d: kernel_size {kernel_size} and strides {strides} must be ≥ 1, padding {padding} ≥ 0")
    if kernel.ndim != 2 or kernel.shape[0] != kh * kw * x.shape[-1]:
        raise ValueError(f"a ({kh}, {kw}) convolution of {x.shape[-1]} channels takes a kernel "
                         f"({kh * kw * x.shape[-1]}, C_out), got shape {kernel.shape}")
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"conv2d takes floating-point operands, got {x.dtype} and {kernel.dtype}")
    for size, k, (lo, hi) in zip(x.shape[1:3], (kh, kw), pads):
        if size + lo + hi < k:
            raise ValueError(f"conv2d: a {x.shape[1:3]} image padded by {padding} is smaller than the "
                             f"{(kh, kw)} kernel")
    return _conv2d(x.astype(dtype), kernel.astype(dtype), geometry)


# ---------------------------------------------------------------------------
# Detector noise


def _standard_normal_call(words: Array, shape: tuple[int, ...], dtype) -> Array:
    call = jax.ffi.ffi_call(
        "lumijax_standard_normal", jax.ShapeDtypeStruct(words.shape[:-1] + shape, dtype), vmap_method="broadcast_all"
    )
    return call(words)


def standard_normal(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Independent ``N(0, 1)`` draws of ``shape`` (float32 or float64) from
    a typed PRNG ``key``.

    On CPU the native counter-based sampler draws them on all cores,
    seeded by two words drawn from ``key``: float32 by the Box–Muller
    transform of eight xoshiro256++ streams per block of draws (radius
    capped at 5.77), float64 by a ziggurat on one stream per block;
    elsewhere, or with ``LUMIJAX_NATIVE=0``, ``jax.random.normal``. Either is
    reproducible from the key, but the two give different draws. The draws
    are constants for differentiation.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"standard_normal draws float32 or float64, got {dtype}")
    shape = tuple(int(s) for s in shape)
    words = jax.random.bits(key, (2,), jnp.uint32)
    return jax.lax.stop_gradient(_dispatch(
        lambda w, k: _standard_normal_call(w, shape, dtype),
        lambda w, k: jax.random.normal(k, shape, dtype),
        words,
        key,
    ))
