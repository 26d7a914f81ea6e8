"""2-D convolution (NHWC) as a matrix product, lowered per shape.

A convolution multiplies every output pixel's receptive field, a patch of
``(kh, kw, C_in)`` inputs, by the same ``(kh·kw·C_in, C_out)`` kernel: the
product a photonic core computes, with the input channels of one tap on
adjacent wavelengths. :class:`Conv2D` holds the geometry and lowers that
product in one of two ways:

* ``"native"``: :func:`lumijax.kernels.conv2d`, the native im2col kernels
  (blocks of the patch matrix filled and multiplied in cache, both
  gradients too) on CPU, ``lax.conv_general_dilated`` elsewhere and for
  dilated kernels;
* ``"patches"``: the explicit patch matrix (zero padding, one strided slice
  per tap, concatenated along the channels; a slice alone for 1×1), times
  the kernel in one XLA ``dot_general``. The hardware modes use it where it
  fits in memory: their converters round the sums of one matrix product
  over the patches, as the runtime computes them.

Both compute the same sums (up to float rounding), and both have gradients.
The choice is static under ``jit`` (it depends on shapes alone).

:class:`ConvTranspose2D` is the geometry of a transposed convolution: each
input pixel times a ``(C_in, kh·kw·C_out)`` matrix (one product per pixel,
no inserted zeros), the taps' contributions then added into the output.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from lumijax import kernels

Array = jax.Array
Lowering = Literal["native", "patches"]
PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]

#: The largest patch matrix built (elements) for ``exact`` products.
MAX_PATCH_ELEMENTS = 1 << 23


def _pair(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} = {value!r}: need one integer ≥ {minimum} or two")
    return pair


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """The geometry of a 2-D convolution over NHWC images.

    Attributes:
      kernel_size: ``(kh, kw)`` taps.
      strides: ``(sh, sw)`` pixels.
      padding: ``"SAME"`` or ``"VALID"`` (resolved for each input size as
        ``lax.conv_general_dilated`` does), or explicit zero padding
        ``((top, bottom), (left, right))`` pixels, or one count for all four
        sides.
      lowering: ``"native"`` or ``"patches"`` for every input; default
        (``None``) chosen for each input shape by :meth:`lowering_for`.
      dilation: ``(dh, dw)`` pixels between adjacent taps (1: contiguous).
    """

    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    lowering: Lowering | None = None
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "kernel_size"))
        object.__setattr__(self, "strides", _pair(self.strides, "strides"))
        object.__setattr__(self, "dilation", _pair(self.dilation, "dilation"))
        object.__setattr__(self, "padding", _normalize_padding(self.padding))
        if self.lowering not in (None, "native", "patches"):
            raise ValueError(f"lowering = {self.lowering!r}: use 'native', 'patches' or None (chosen per shape)")

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def extent(self) -> tuple[int, int]:
        """Pixels ``(rows, columns)`` one output's taps span:
        ``dilation·(k − 1) + 1``."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))

    def pads(self, input_hw: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Explicit ``((top, bottom), (left, right))`` padding for an input
        of ``input_hw`` pixels."""
        if isinstance(self.padding, str):
            pads = jax.lax.padtype_to_pads(tuple(input_hw), self.extent, self.strides, self.padding)
            return tuple(tuple(int(p) for p in pair) for pair in pads)
        return self.padding

    def output_hw(self, input_hw: Sequence[int]) -> tuple[int, int]:
        """Output pixels ``(H', W')`` for an input of ``input_hw`` pixels."""
        out = []
        for size, k, s, (lo, hi) in zip(input_hw, self.extent, self.strides, self.pads(input_hw)):
            span = size + lo + hi - k
            if span < 0:
                raise ValueError(f"a {tuple(input_hw)} image padded by {self.pads(input_hw)} is smaller than "
                                 f"the {self.kernel_size} kernel (dilation {self.dilation})")
            out.append(span // s + 1)
        return tuple(out)

    def lowering_for(self, input_shape: Sequence[int], *, exact: bool = False) -> Lowering:
        """How the product is lowered for an input ``(N, H, W, C_in)``: the
        fixed ``lowering``, else the patch matrix when ``exact`` asks for the
        sums of one XLA matrix product over the patches (as the runtime
        computes them: a converter after the product can round differently
        ordered sums to another code) and the matrix stays within
        :data:`MAX_PATCH_ELEMENTS`, else the native kernels."""
        if self.lowering is not None:
            return self.lowering
        n, h, w, c = input_shape
        ho, wo = self.output_hw((h, w))
        fits = n * ho * wo * self.taps * c <= MAX_PATCH_ELEMENTS
        return "patches" if exact and fits else "native"

    def tap_slices(self, x: Array) -> list[Array]:
        """What each tap reads of ``x`` ``(N, H, W, C)``: ``kh·kw`` arrays
        ``(N, H', W', C)`` in row-major tap order, zeros where a tap falls
        on the padding."""
        _check_image(x)
        (top, bottom), (left, right) = self.pads(x.shape[1:3])
        ho, wo = self.output_hw(x.shape[1:3])
        x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        (sh, sw), (kh, kw), (dh, dw) = self.strides, self.kernel_size, self.dilation
        n, _, _, c = x.shape
        return [
            jax.lax.slice(x, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                          (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)
        ]

    def reads_every_pixel(self, input_hw: Sequence[int]) -> bool:
        """Whether some tap reads every pixel of an ``input_hw`` image (not
        so when the stride skips rows or columns)."""
        for size, k, d, s, (lo, _), out in zip(input_hw, self.kernel_size, self.dilation, self.strides,
                                               self.pads(input_hw), self.output_hw(input_hw)):
            read = {d * i + s * t for i in range(k) for t in range(out)}
            if not all(lo + p in read for p in range(size)):
                return False
        return True

    def dac_inputs(self, x: Array) -> list[Array]:
        """Arrays holding exactly the pixels of ``x`` that the patch matrix
        reads (besides the padding's zeros): ``[x]`` when every pixel is
        read, else the :meth:`tap_slices`. Their extremes are those of the
        patch matrix, without building it."""
        return [x] if self.reads_every_pixel(x.shape[1:3]) else self.tap_slices(x)

    def patches(self, x: Array) -> Array:
        """The patch matrix of ``x`` ``(N, H, W, C)``: ``(N, H', W',
        kh·kw·C)``, the :meth:`tap_slices` side by side (``C`` fastest
        within a tap)."""
        columns = self.tap_slices(x)
        return columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)

    def __call__(self, x: Array, kernel: Array, *, exact: bool = False) -> Array:
        """The convolution of ``x`` ``(N, H, W, C_in)`` with ``kernel``
        ``(kh·kw·C_in, C_out)`` (patch order, the ``(kh, kw, C_in, C_out)``
        kernel flattened): ``(N, H', W', C_out)``; ``exact`` as for
        :meth:`lowering_for`."""
        _check_image(x)
        if kernel.ndim != 2 or kernel.shape[0] != self.taps * x.shape[-1]:
            raise ValueError(f"a {self.kernel_size} convolution of {x.shape[-1]} channels takes a kernel "
                             f"({self.taps * x.shape[-1]}, out), got shape {kernel.shape}")
        if self.lowering_for(x.shape, exact=exact) == "patches":
            return jnp.matmul(self.patches(x), kernel)
        if self.dilation != (1, 1):
            return jax.lax.conv_general_dilated(
                x, kernel.reshape(*self.kernel_size, x.shape[-1], -1), self.strides, self.pads(x.shape[1:3]),
                rhs_dilation=self.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return kernels.conv2d(x, kernel, self.kernel_size, self.strides, self.pads(x.shape[1:3]))


def _check_image(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"a 2-D convolution takes NHWC images (4 axes), got shape {x.shape}")


def _normalize_padding(padding: PaddingLike) -> str | tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding = {padding!r}: use 'SAME', 'VALID' or explicit zero padding")
        return padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool):
        pairs = ((padding, padding), (padding, padding))
    else:
        items = tuple(padding)
        pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in items)
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for p in pairs for v in p):
        raise ValueError(f"padding = {padding!r}: need 'SAME', 'VALID', a count ≥ 0 or two (low, high) pairs")
    return tuple(tuple(int(v) for v in p) for p in pairs)


@dataclasses.dataclass(frozen=True)
class ConvTranspose2D:
    """The geometry of a transposed 2-D convolution over NHWC images
    (torch's ``ConvTranspose2d``): input pixel ``(h, w)`` times the kernel's
    tap ``(i, j)`` lands on output pixel ``(s_h·h + d_h·i − p_h, s_w·w +
    d_w·j − p_w)``, and the contributions that land on one pixel add up.

    Attributes:
      kernel_size: ``(kh, kw)`` taps.
      strides: ``(sh, sw)`` output pixels between adjacent input pixels.
      padding: ``(ph, pw)`` output pixels cropped from each side.
      output_padding: ``(oh, ow)`` output pixels added at the bottom and
        right (less than the stride or the dilation, as in torch).
      dilation: ``(dh, dw)`` output pixels between adjacent taps.
    """

    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        for name in ("kernel_size", "strides", "dilation"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        for name in ("padding", "output_padding"):
            object.__setattr__(self, name, _pair(getattr(self, name), name, minimum=0))
        for o, s, d in zip(self.output_padding, self.strides, self.dilation):
            if o >= max(s, d):
                raise ValueError(f"output_padding {self.output_padding} must be smaller than the stride "
                                 f"{self.strides} or the dilation {self.dilation}")

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def output_hw(self, input_hw: Sequence[int]) -> tuple[int, int]:
        """Output pixels ``(s·(H − 1) − 2p + d·(k − 1) + o + 1)`` per axis."""
        out = tuple((size - 1) * s - 2 * p + d * (k - 1) + o + 1 for size, s, p, d, k, o in zip(
            input_hw, self.strides, self.padding, self.dilation, self.kernel_size, self.output_padding))
        if min(out) < 1:
            raise ValueError(f"a {tuple(input_hw)} image gives no output pixels with padding {self.padding}")
        return out

    def overlap_add(self, y: Array) -> Array:
        """Adds every input pixel's tap contributions ``y`` ``(N, H, W, kh,
        kw, C)`` into the output image ``(N, H', W', C)``."""
        if y.ndim != 6 or y.shape[3:5] != self.kernel_size:
            raise ValueError(f"overlap_add takes (N, H, W, {self.kernel_size[0]}, {self.kernel_size[1]}, C), got {y.shape}")
        n, h, w, kh, kw, c = y.shape
        ho, wo = self.output_hw((h, w))
        (sh, sw), (ph, pw), (dh, dw) = self.strides, self.padding, self.dilation
        zero = jnp.zeros((), y.dtype)

        def placed(i: int, j: int) -> Array:
            rows = (dh * i - ph, ho - (dh * i - ph) - (h - 1) * sh - 1, sh - 1)
            columns = (dw * j - pw, wo - (dw * j - pw) - (w - 1) * sw - 1, sw - 1)
            return jax.lax.pad(y[:, :, :, i, j], zero, ((0, 0, 0), rows, columns, (0, 0, 0)))

        return functools.reduce(jnp.add, [placed(i, j) for i in range(kh) for j in range(kw)])
