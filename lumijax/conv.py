"""2-D convolution (NHWC) as a matrix product, lowered per shape.

A convolution multiplies every output pixel's receptive field, a patch of
``(kh, kw, C_in)`` inputs, by the same ``(kh·kw·C_in, C_out)`` kernel: the
product a photonic core computes, with the input channels of one tap on
adjacent wavelengths. :class:`Conv2D` holds the geometry and lowers that
product in one of two ways:

* ``"native"``: :func:`lumijax.kernels.conv2d`, the native im2col kernels
  (blocks of the patch matrix filled and multiplied in cache, both
  gradients too) on CPU, ``lax.conv_general_dilated`` elsewhere;
* ``"patches"``: the explicit patch matrix (zero padding, one strided slice
  per tap, concatenated along the channels; a slice alone for 1×1), times
  the kernel in one XLA ``dot_general``. The hardware modes use it where it
  fits in memory: their converters round the sums of one matrix product
  over the patches, as the runtime computes them.

Both compute the same sums (up to float rounding), and both have gradients.
The choice is static under ``jit`` (it depends on shapes alone).
"""

from __future__ import annotations

import dataclasses
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


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} = {value!r}: need one integer ≥ 1 or two")
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
    """

    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    lowering: Lowering | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "kernel_size"))
        object.__setattr__(self, "strides", _pair(self.strides, "strides"))
        object.__setattr__(self, "padding", _normalize_padding(self.padding))
        if self.lowering not in (None, "native", "patches"):
            raise ValueError(f"lowering = {self.lowering!r}: use 'native', 'patches' or None (chosen per shape)")

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def pads(self, input_hw: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Explicit ``((top, bottom), (left, right))`` padding for an input
        of ``input_hw`` pixels."""
        if isinstance(self.padding, str):
            pads = jax.lax.padtype_to_pads(tuple(input_hw), self.kernel_size, self.strides, self.padding)
            return tuple(tuple(int(p) for p in pair) for pair in pads)
        return self.padding

    def output_hw(self, input_hw: Sequence[int]) -> tuple[int, int]:
        """Output pixels ``(H', W')`` for an input of ``input_hw`` pixels."""
        out = []
        for size, k, s, (lo, hi) in zip(input_hw, self.kernel_size, self.strides, self.pads(input_hw)):
            span = size + lo + hi - k
            if span < 0:
                raise ValueError(f"a {tuple(input_hw)} image padded by {self.pads(input_hw)} is smaller than "
                                 f"the {self.kernel_size} kernel")
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
        (sh, sw), (kh, kw) = self.strides, self.kernel_size
        n, _, _, c = x.shape
        return [
            jax.lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)
        ]

    def reads_every_pixel(self, input_hw: Sequence[int]) -> bool:
        """Whether some tap reads every pixel of an ``input_hw`` image (not
        so when the stride skips rows or columns)."""
        for size, k, s, (lo, _), out in zip(input_hw, self.kernel_size, self.strides, self.pads(input_hw),
                                            self.output_hw(input_hw)):
            read = {i + s * t for i in range(k) for t in range(out)}
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
