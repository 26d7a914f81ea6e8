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


def _dispatch(native_impl: Callable, reference_impl: Callable, *args: Array) -> Array:
    """The native kernel on CPU, the reference elsewhere or when disabled."""
    if not native_enabled():
        return reference_impl(*args)
    return jax.lax.platform_dependent(*args, cpu=native_impl, default=reference_impl)


# ---------------------------------------------------------------------------
# Complex (and real) batched matrix product


def complex_matmul_reference(a: Array, b: Array) -> Array:
    """``a @ b`` in jnp at full precision: the reference for :func:`complex_matmul`."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _matmul_call(a: Array, b: Array, op_a: int, op_b: int) -> Array:
    """``op(a) @ op(b)`` on the native GEMM.

    The operands get the same number of batch axes first, so that the axis
    ``vmap`` prepends lines up in the kernel's right-aligned broadcasting.
    """
    m = a.shape[-1] if op_a else a.shape[-2]
    n = b.shape[-2] if op_b else b.shape[-1]
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.reshape((1,) * (len(batch) + 2 - a.ndim) + a.shape)
    b = b.reshape((1,) * (len(batch) + 2 - b.ndim) + b.shape)
    out = jax.ShapeDtypeStruct((*batch, m, n), a.dtype)
    call = jax.ffi.ffi_call("lumijax_matmul", out, vmap_method="broadcast_all")
    return call(a, b, op_a=np.int64(op_a), op_b=np.int64(op_b))


def _product_reference(a: Array, b: Array, op_a: int, op_b: int) -> Array:
    a = jnp.swapaxes(a, -1, -2) if op_a else a
    b = jnp.swapaxes(b, -1, -2) if op_b else b
    return complex_matmul_reference(a, b)


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


def _check_matmul_operands(a: Array, b: Array) -> tuple[Array, Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"complex_matmul needs operands of rank ≥ 2, got shapes {a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"complex_matmul: inner dimensions differ, a is {a.shape} and b is {b.shape} "
            f"({a.shape[-1]} ≠ {b.shape[-2]})"
        )
    dtype = jnp.promote_types(a.dtype, b.dtype)
    if dtype not in _MATMUL_DTYPES:
        raise TypeError(
            f"complex_matmul takes float32, float64, complex64 or complex128 operands, "
            f"got {a.dtype} and {b.dtype}"
        )
    try:
        jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ValueError(
            f"complex_matmul: batch axes {a.shape[:-2]} and {b.shape[:-2]} do not broadcast"
        ) from err
    return a.astype(dtype), b.astype(dtype)


def complex_matmul(a: Array, b: Array) -> Array:
    """Batched ``a @ b`` on the native GEMM.

    Args:
      a: shape ``(*batch_a, m, k)``; float32, float64, complex64 or complex128.
      b: shape ``(*batch_b, k, n)``; batch axes broadcast as in ``jnp.matmul``
        (broadcast axes are strided over by the kernel, never copied).

    Returns:
      ``(*batch, m, n)`` in the promoted dtype of ``a`` and ``b``.

    Raises:
      ValueError: rank < 2, mismatched inner dimensions or batch axes.
      TypeError: a dtype other than the four above.
    """
    a, b = _check_matmul_operands(a, b)
    return _product(a, b, _IDENTITY, _IDENTITY)


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


def _softmax_call(x: Array, scale: float, offset: int) -> Array:
    call = jax.ffi.ffi_call(
        "lumijax_causal_softmax", jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="broadcast_all"
    )
    return call(x, scale=np.float32(scale), offset=np.int64(offset))


def _softmax_bwd_call(p: Array, dp: Array, scale: float, offset: int) -> Array:
    call = jax.ffi.ffi_call(
        "lumijax_causal_softmax_bwd", jax.ShapeDtypeStruct(p.shape, p.dtype), vmap_method="broadcast_all"
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
