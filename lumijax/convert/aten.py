"""ATen ops as jnp functions, for interpreting ``torch.export`` graphs.

Each function takes the op's schema arguments by name (``self``, ``dim``, …,
defaults already filled in) and follows torch's semantics for the
arguments an exported inference graph uses. The matrix products are not
here: :mod:`lumijax.convert.program` puts them on photonic layers. Ops not
in :data:`OPS` are reported by the converter, by name and place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class UnsupportedArguments(ValueError):
    """An op this table knows, called with arguments it cannot honour."""


def dtype_of(name: str | None):
    """A torch dtype name (``"float32"``, ``"int64"``, …) as a JAX dtype."""
    return None if name is None else jax.dtypes.canonicalize_dtype(jnp.dtype(name))


def functional(op: str) -> str:
    """The functional form of an in-place op (``aten.relu_.default`` →
    ``aten.relu.default``); other ops unchanged."""
    parts = op.split(".")
    if len(parts) == 3 and parts[1].endswith("_") and not parts[1].startswith("_"):
        parts[1] = parts[1][:-1]
    return ".".join(parts)


def _dims(dim: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(ndim))
    return tuple(d % ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim]))


def _cast(x: Array, dtype: str | None) -> Array:
    return x if dtype is None else x.astype(dtype_of(dtype))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _reshape(self, size):
    return jnp.reshape(self, tuple(size))


def _expand(self, size, implicit=False):
    lead = len(size) - self.ndim
    shape = tuple(self.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return jnp.broadcast_to(self, shape)


def _slice(self, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * self.ndim
    index[dim] = slice(start, end, step)
    return self[tuple(index)]


def _select(self, dim, index):
    return jnp.take(self, index, axis=dim)


def _index(self, indices):
    return self[tuple(slice(None) if i is None else i for i in indices)]


def _split(self, split_size, dim=0):
    n = self.shape[dim]
    return list(jnp.split(self, list(range(split_size, n, split_size)), axis=dim))


def _split_with_sizes(self, split_sizes, dim=0):
    return list(jnp.split(self, list(np.cumsum(split_sizes)[:-1]), axis=dim))


def _chunk(self, chunks, dim=0):
    size = -(-self.shape[dim] // chunks)
    return _split(self, size, dim)


def _squeeze(self, dim=None):
    dims = [d % self.ndim for d in ([dim] if isinstance(dim, int) else dim or range(self.ndim))]
    return jnp.squeeze(self, tuple(d for d in dims if self.shape[d] == 1))


def _flatten(self, start_dim=0, end_dim=-1):
    if self.ndim == 0:
        return self.reshape(1)
    start, end = start_dim % self.ndim, end_dim % self.ndim
    return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])


def _arange(start=0, end=None, step=1, dtype=None, **_):
    values = jnp.arange(start, end, step)
    return _cast(values, dtype)


def _creation(fill) -> Callable:
    def create(size, fill_value=fill, dtype=None, **_):
        return jnp.full(tuple(size), fill_value, dtype_of(dtype) or jnp.float32)

    return create


def _like(fill) -> Callable:
    def create(self, dtype=None, **_):
        return jnp.full(self.shape, fill, dtype_of(dtype) or self.dtype)

    return create


def _new(fill) -> Callable:
    def create(self, size, dtype=None, **_):
        return jnp.full(tuple(size), fill, dtype_of(dtype) or self.dtype)

    return create


def _add(self, other, alpha=1):
    return self + other * alpha if alpha != 1 else self + other


def _sub(self, other, alpha=1):
    return self - other * alpha if alpha != 1 else self - other


def _div(self, other, rounding_mode=None):
    if rounding_mode is None:
        return jnp.true_divide(self, other)
    if rounding_mode == "floor":
        return jnp.floor_divide(self, other)
    return jnp.trunc(jnp.true_divide(self, other)).astype(jnp.result_type(self, other))


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    axes = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    mean = jnp.mean(input, axis=axes, keepdims=True)
    centred = input - mean
    y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y


def _channels(v: Array | None, ndim: int) -> Array | None:
    return None if v is None else v.reshape((1, -1) + (1,) * (ndim - 2))


def _batch_norm_eval(input, weight, bias, running_mean, running_var, eps):
    y = (input - _channels(running_mean, input.ndim)) * jax.lax.rsqrt(_channels(running_var, input.ndim) + eps)
    y = y * _channels(weight, input.ndim) if weight is not None else y
    return y + _channels(bias, input.ndim) if bias is not None else y


def _batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled):
    if training or running_mean is None:
        raise UnsupportedArguments("batch_norm in training mode (call module.eval() before converting)")
    return _batch_norm_eval(input, weight, bias, running_mean, running_var, eps)


def _batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    y = _batch_norm_eval(input, weight, bias, running_mean, running_var, eps)
    return [y, jnp.zeros((0,), input.dtype), jnp.zeros((0,), input.dtype)]


def _pool_geometry(self, kernel_size, stride, padding, dilation, ceil_mode):
    """Window, strides, dilation and ``((lo, hi),)`` padding of the two
    spatial axes of a torch 2-D pooling. With ``ceil_mode`` the output
    rounds up, the extra windows overhanging the bottom/right edge (padded
    past torch's ``padding``), except a last window that would start in the
    right padding, which torch drops."""
    kernel, dilation = _pair(kernel_size), _pair(dilation)
    strides = _pair(stride) if len(stride or ()) else kernel
    pads = []
    for size, k, s, p, d in zip(self.shape[-2:], kernel, strides, _pair(padding), dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        pads.append((p, max((out - 1) * s + d * (k - 1) + 1 - size - p, p)))
    return kernel, strides, dilation, pads


def _max_pool2d(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    kernel, strides, dilation, pads = _pool_geometry(self, kernel_size, stride, padding, dilation, ceil_mode)
    lead = (1,) * (self.ndim - 2)
    return jax.lax.reduce_window(
        self, -jnp.inf, jax.lax.max, lead + kernel, lead + strides, ((0, 0),) * (self.ndim - 2) + tuple(pads),
        window_dilation=lead + dilation,
    )


def _avg_pool2d(self, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """torch's average pooling: the divisor of a window counts its cells in
    the input, plus (``count_include_pad``) those in torch's ``padding``,
    never those past it that ``ceil_mode`` adds."""
    kernel, strides, _, pads = _pool_geometry(self, kernel_size, stride, padding, 1, ceil_mode)
    lead = (1,) * (self.ndim - 2)
    total = jax.lax.reduce_window(self, 0.0, jax.lax.add, lead + kernel, lead + strides, ((0, 0),) * (self.ndim - 2) + tuple(pads))
    if divisor_override:
        return total / divisor_override
    p = _pair(padding)
    cells = jnp.pad(jnp.ones(self.shape[-2:], self.dtype), tuple((q, q) for q in p), constant_values=1.0 if count_include_pad else 0.0)
    extra = tuple((0, hi - q) for (_, hi), q in zip(pads, p))
    count = jax.lax.reduce_window(jnp.pad(cells, extra), 0.0, jax.lax.add, kernel, strides, ((0, 0), (0, 0)))
    return total / count


def _adaptive_avg_pool2d(self, output_size):
    oh, ow = _pair(output_size)
    h, w = self.shape[-2:]
    if h % oh or w % ow:
        raise UnsupportedArguments(f"adaptive_avg_pool2d from {h}×{w} to {oh}×{ow} (sizes that do not divide)")
    return self.reshape(self.shape[:-2] + (oh, h // oh, ow, w // ow)).mean(axis=(-3, -1))


def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """Rows of ``weight`` ``(V, D)`` at ``indices``; as in torch, the
    ``padding_idx`` row gets no gradient."""
    if scale_grad_by_freq:
        raise UnsupportedArguments("embedding with scale_grad_by_freq")
    rows = jnp.take(weight, indices, axis=0)
    if padding_idx is None or padding_idx < 0:
        return rows
    return jnp.where((indices == padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)


def _dropout(input, p, train):
    if train and p > 0:
        raise UnsupportedArguments("dropout in training mode (call module.eval() before converting)")
    return input


def is_identity(op: str, arguments: dict) -> bool:
    """Whether ``op`` with these arguments returns its input unchanged (an
    in-place form of it writes nothing)."""
    return op == "aten.dropout.default" and not (arguments.get("train") and arguments.get("p"))


def _unflatten(self, dim, sizes):
    dim = dim % self.ndim
    return self.reshape(self.shape[:dim] + tuple(sizes) + self.shape[dim + 1:])


def _unbind(self, dim=0):
    return [jnp.take(self, i, axis=dim) for i in range(self.shape[dim])]


def _gather(self, dim, index, sparse_grad=False):
    return jnp.take_along_axis(self, index, axis=dim)


def _full_like(self, fill_value, dtype=None, **_):
    return jnp.full(self.shape, fill_value, dtype_of(dtype) or self.dtype)


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """torch's ``group_norm`` over ``(N, C, *)``: mean and biased variance
    over each group of ``C/num_groups`` channels and all positions."""
    n, c = input.shape[:2]
    grouped = input.reshape((n, num_groups, -1))
    mean = jnp.mean(grouped, axis=-1, keepdims=True)
    centred = grouped - mean
    y = (centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)).reshape(input.shape)
    y = y * _channels(weight, input.ndim) if weight is not None else y
    return y + _channels(bias, input.ndim) if bias is not None else y


def _instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn_enabled):
    if not use_input_stats:
        return _batch_norm_eval(input, weight, bias, running_mean, running_var, eps)
    return _group_norm(input, input.shape[1], weight, bias, eps)


def _source_index(out: int, size: int, scale: float | None, align_corners: bool, centred: bool) -> Array:
    """The input coordinate of each of ``out`` output positions along an
    axis of ``size`` (torch's ``area_pixel_compute_source_index``): the
    step is ``1/scale`` when a scale factor is given, else ``size/out``."""
    dst = jnp.arange(out, dtype=jnp.float32)
    if align_corners:
        return dst * ((size - 1) / (out - 1) if out > 1 else 0.0)
    step = 1.0 / scale if scale else size / out
    return jnp.maximum((dst + 0.5) * step - 0.5, 0.0) if centred else dst * step


def _output_sizes(input, output_size, scale_factors) -> tuple[tuple[int, ...], tuple]:
    spatial = input.shape[2:]
    if output_size is not None:
        return tuple(int(o) for o in output_size), (None,) * len(spatial)
    scales = tuple(float(f) for f in scale_factors)
    return tuple(int(np.floor(s * f)) for s, f in zip(spatial, scales)), scales


def _upsample_nearest(input, output_size=None, scale_factors=None):
    """torch's ``nearest`` interpolation: input ``floor(dst·step)``."""
    sizes, scales = _output_sizes(input, output_size, scale_factors)
    y = input
    for axis, (out, size, scale) in enumerate(zip(sizes, input.shape[2:], scales), start=2):
        index = jnp.minimum(jnp.floor(_source_index(out, size, scale, False, False)).astype(jnp.int32), size - 1)
        y = jnp.take(y, index, axis=axis)
    return y


def _upsample_linear(input, output_size=None, align_corners=False, scale_factors=None):
    """torch's ``bilinear`` (any number of spatial axes: one at a time)."""
    sizes, scales = _output_sizes(input, output_size, scale_factors)
    y = input
    for axis, (out, size, scale) in enumerate(zip(sizes, input.shape[2:], scales), start=2):
        source = _source_index(out, size, scale, align_corners, True)
        low = jnp.minimum(jnp.floor(source).astype(jnp.int32), size - 1)
        high = jnp.minimum(low + 1, size - 1)
        weight = (source - low).astype(input.dtype).reshape((-1,) + (1,) * (input.ndim - axis - 1))
        y = jnp.take(y, low, axis=axis) * (1 - weight) + jnp.take(y, high, axis=axis) * weight
    return y


def _softmax(self, dim, dtype=None):
    return jax.nn.softmax(_cast(self, dtype), axis=dim)


def _log_softmax(self, dim, dtype=None):
    return jax.nn.log_softmax(_cast(self, dtype), axis=dim)


def _reduction(fn) -> Callable:
    def reduce(self, dim=None, keepdim=False, dtype=None):
        return fn(_cast(self, dtype), axis=_dims(dim, self.ndim), keepdims=keepdim)

    return reduce


def _cumsum(self, dim, dtype=None):
    x = self.astype(jnp.int32) if self.dtype == jnp.bool_ else self
    return jnp.cumsum(_cast(x, dtype), axis=dim)


def _diff(self, n=1, dim=-1, prepend=None, append=None):
    return jnp.diff(self, n=n, axis=dim, prepend=prepend, append=append)


def _to(self, dtype=None, **_):
    return _cast(self, dtype)


def _gelu(self, approximate="none"):
    return jax.nn.gelu(self, approximate=approximate == "tanh")


def _clamp(self, min=None, max=None):
    """torch's ``clamp`` (also ``hardtanh``, ``relu6``): the gradient
    passes strictly inside ``(min, max)``; at a bound it is 0, as in torch.
    NaN stays NaN."""
    if min is not None:
        self = jnp.where(self <= min, jnp.asarray(min, self.dtype), self)
    if max is not None:
        self = jnp.where(self >= max, jnp.asarray(max, self.dtype), self)
    return self


def _hardsigmoid(self):
    """``relu6(x + 3) / 6`` with torch's gradient: ``1/6`` strictly inside
    ``(−3, 3)``, else 0."""
    return jnp.where(self <= -3, 0.0, jnp.where(self >= 3, 1.0, self / 6 + 0.5)).astype(self.dtype)


def _hardswish(self):
    """``x·relu6(x + 3) / 6`` with torch's gradient: 0 up to −3,
    ``x/3 + 1/2`` strictly inside ``(−3, 3)``, 1 from 3 on."""
    return jnp.where(self <= -3, 0.0, jnp.where(self >= 3, self, self * (self + 3) / 6)).astype(self.dtype)


def _masked_fill(self, mask, value):
    return jnp.where(mask, jnp.asarray(value, self.dtype), self)


def _unary(fn: Callable) -> Callable:
    return lambda self: fn(self)


def _binary(fn: Callable) -> Callable:
    return lambda self, other: fn(self, other)


def _no_op(*args, **kwargs):
    return None


def _identity(self, **_):
    return self


OPS: dict[str, Callable] = {
    # views and layout
    "aten.view.default": _reshape,
    "aten.reshape.default": lambda self, shape: jnp.reshape(self, tuple(shape)),
    "aten._unsafe_view.default": _reshape,
    "aten.unsqueeze.default": lambda self, dim: jnp.expand_dims(self, dim),
    "aten.squeeze.dim": _squeeze,
    "aten.squeeze.dims": _squeeze,
    "aten.squeeze.default": _squeeze,
    "aten.flatten.using_ints": _flatten,
    "aten.permute.default": lambda self, dims: jnp.transpose(self, tuple(dims)),
    "aten.transpose.int": lambda self, dim0, dim1: jnp.swapaxes(self, dim0, dim1),
    "aten.t.default": lambda self: self.T,
    "aten.flip.default": lambda self, dims: jnp.flip(self, tuple(dims)),
    "aten.expand.default": _expand,
    "aten.contiguous.default": _identity,
    "aten.clone.default": _identity,
    "aten.alias.default": _identity,
    "aten.detach.default": _identity,
    "aten.lift_fresh_copy.default": _identity,
    "aten._assert_tensor_metadata.default": _no_op,
    "aten.to.dtype_layout": _to,
    "aten.to.dtype": _to,
    "aten._to_copy.default": _to,
    "aten.to.device": _to,
    "aten.unflatten.int": _unflatten,
    "aten.unbind.int": _unbind,
    "aten.gather.default": _gather,
    "aten.type_as.default": lambda self, other: self.astype(other.dtype),
    "aten.slice.Tensor": _slice,
    "aten.select.int": _select,
    "aten.index.Tensor": _index,
    "aten.split.Tensor": _split,
    "aten.split_with_sizes.default": _split_with_sizes,
    "aten.chunk.default": _chunk,
    "aten.cat.default": lambda tensors, dim=0: jnp.concatenate(tensors, axis=dim),
    "aten.stack.default": lambda tensors, dim=0: jnp.stack(tensors, axis=dim),
    "getitem": lambda self, index: self[index],
    # creation
    "aten.arange.default": lambda end, dtype=None, **_: _arange(0, end, 1, dtype),
    "aten.arange.start": lambda start, end, dtype=None, **_: _arange(start, end, 1, dtype),
    "aten.arange.start_step": _arange,
    "aten.ones.default": _creation(1),
    "aten.zeros.default": _creation(0),
    "aten.full.default": _creation(None),
    "aten.new_ones.default": _new(1),
    "aten.new_zeros.default": _new(0),
    "aten.ones_like.default": _like(1),
    "aten.zeros_like.default": _like(0),
    "aten.full_like.default": _full_like,
    "aten.scalar_tensor.default": lambda s, dtype=None, **_: jnp.asarray(s, dtype_of(dtype) or jnp.float32),
    "aten.tril.default": lambda self, diagonal=0: jnp.tril(self, diagonal),
    "aten.triu.default": lambda self, diagonal=0: jnp.triu(self, diagonal),
    # arithmetic
    "aten.add.Tensor": _add,
    "aten.add.Scalar": _add,
    "aten.sub.Tensor": _sub,
    "aten.sub.Scalar": _sub,
    "aten.rsub.Scalar": lambda self, other, alpha=1: other - self * alpha,
    "aten.rsub.Tensor": lambda self, other, alpha=1: other - self * alpha,
    "aten.mul.Tensor": lambda self, other: self * other,
    "aten.mul.Scalar": lambda self, other: self * other,
    "aten.div.Tensor": _div,
    "aten.div.Scalar": _div,
    "aten.div.Tensor_mode": _div,
    "aten.pow.Tensor_Scalar": lambda self, exponent: jnp.power(self, exponent),
    "aten.pow.Tensor_Tensor": lambda self, exponent: jnp.power(self, exponent),
    "aten.neg.default": _unary(jnp.negative),
    "aten.abs.default": _unary(jnp.abs),
    "aten.rsqrt.default": _unary(jax.lax.rsqrt),
    "aten.sqrt.default": _unary(jnp.sqrt),
    "aten.exp.default": _unary(jnp.exp),
    "aten.cos.default": _unary(jnp.cos),
    "aten.sin.default": _unary(jnp.sin),
    "aten.minimum.default": _binary(jnp.minimum),
    "aten.maximum.default": _binary(jnp.maximum),
    "aten.min.other": _binary(jnp.minimum),
    "aten.max.other": _binary(jnp.maximum),
    "aten.log.default": _unary(jnp.log),
    "aten.tanh.default": _unary(jnp.tanh),
    "aten.sigmoid.default": _unary(jax.nn.sigmoid),
    "aten.clamp.default": _clamp,
    # activations and normalisation
    "aten.relu.default": _unary(jax.nn.relu),
    "aten.gelu.default": _gelu,
    "aten.silu.default": _unary(jax.nn.silu),
    "aten.hardswish.default": _hardswish,
    "aten.hardsigmoid.default": _hardsigmoid,
    "aten.hardtanh.default": lambda self, min_val=-1.0, max_val=1.0: _clamp(self, min_val, max_val),
    "aten.relu6.default": lambda self: _clamp(self, 0.0, 6.0),
    "aten.softmax.int": _softmax,
    "aten._softmax.default": lambda self, dim, half_to_float: jax.nn.softmax(self, axis=dim),
    "aten.log_softmax.int": _log_softmax,
    "aten.layer_norm.default": _layer_norm,
    "aten.group_norm.default": _group_norm,
    "aten.instance_norm.default": _instance_norm,
    "aten.batch_norm.default": _batch_norm,
    "aten._native_batch_norm_legit_no_training.default": _batch_norm_no_training,
    "aten.dropout.default": _dropout,
    # reductions and pooling
    "aten.mean.dim": _reduction(jnp.mean),
    "aten.mean.default": lambda self, dtype=None: jnp.mean(_cast(self, dtype)),
    "aten.sum.dim_IntList": _reduction(jnp.sum),
    "aten.sum.default": lambda self, dtype=None: jnp.sum(_cast(self, dtype)),
    "aten.amax.default": lambda self, dim=(), keepdim=False: jnp.max(self, axis=_dims(dim, self.ndim), keepdims=keepdim),
    "aten.cumsum.default": _cumsum,
    "aten.diff.default": _diff,
    "aten.max_pool2d.default": _max_pool2d,
    "aten.avg_pool2d.default": _avg_pool2d,
    "aten.adaptive_avg_pool2d.default": _adaptive_avg_pool2d,
    "aten.upsample_nearest2d.vec": _upsample_nearest,
    "aten.upsample_bilinear2d.vec": _upsample_linear,
    "aten.embedding.default": _embedding,
    # comparisons and masks
    "aten.eq.Tensor": _binary(jnp.equal),
    "aten.eq.Scalar": _binary(jnp.equal),
    "aten.ne.Tensor": _binary(jnp.not_equal),
    "aten.ne.Scalar": _binary(jnp.not_equal),
    "aten.le.Tensor": _binary(jnp.less_equal),
    "aten.le.Scalar": _binary(jnp.less_equal),
    "aten.lt.Tensor": _binary(jnp.less),
    "aten.lt.Scalar": _binary(jnp.less),
    "aten.ge.Tensor": _binary(jnp.greater_equal),
    "aten.ge.Scalar": _binary(jnp.greater_equal),
    "aten.gt.Tensor": _binary(jnp.greater),
    "aten.gt.Scalar": _binary(jnp.greater),
    "aten.__and__.Tensor": _binary(jnp.bitwise_and),
    "aten.bitwise_and.Tensor": _binary(jnp.bitwise_and),
    "aten.logical_and.default": _binary(jnp.logical_and),
    "aten.__or__.Tensor": _binary(jnp.bitwise_or),
    "aten.bitwise_or.Tensor": _binary(jnp.bitwise_or),
    "aten.logical_or.default": _binary(jnp.logical_or),
    "aten.logical_not.default": _unary(jnp.logical_not),
    "aten.bitwise_not.default": _unary(jnp.bitwise_not),
    "aten.where.self": lambda condition, self, other: jnp.where(condition, self, other),
    "aten.where.ScalarOther": lambda condition, self, other: jnp.where(condition, self, jnp.asarray(other, self.dtype)),
    "aten.where.ScalarSelf": lambda condition, self, other: jnp.where(condition, jnp.asarray(self, other.dtype), other),
    "aten.masked_fill.Scalar": _masked_fill,
    "aten.masked_fill.Tensor": _masked_fill,
}
"""Supported non-product ATen ops by ``str(op_overload)``. An in-place
variant (``relu_``, ``add_``) runs its functional op and rebinds its first
argument."""
