"""Photonic layers (Flax NNX): every matrix product on the simulated core.

A non-ideal product applies what the hardware does, in order: weights
fake-quantized to codes with a learnable (LSQ) scale → linear crosstalk
compensation → WDM and heater crosstalk and ring drift → input DAC
quantization → the product → detector noise (``"noisy"`` only, from the
``noise`` stream of ``nnx.Rngs``) → output ADC quantization. Mode
``"ideal"`` is the exact float product of the corresponding Flax layer;
``"expected"`` is the noise-free hardware result. The channel spacing and
the (log) scales are ``nnx.Param``s, so gradients reach them.

DAC and ADC ranges come from :class:`~lumijax.quant.DynamicRangeEstimator`
states that :meth:`PhotonicCore.product` updates (call the layer with
``observe=True`` on calibration data); before any observation the range of
the current batch is used. A DAC whose inputs were never negative (after a
ReLU, or images in [0, 1]) drives its modulator with unsigned codes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumijax import hardware as hw
from lumijax import kernels, quant
from lumijax.conv import Conv2D, ConvTranspose2D

Array = jax.Array
Mode = Literal["ideal", "expected", "noisy"]
MODES = ("ideal", "expected", "noisy")


class RangeStat(nnx.Variable):
    """A :class:`~lumijax.quant.RangeState` of a DAC or ADC (not trained)."""


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: use one of {MODES}")
    return mode


def _check_features(in_features: int, out_features: int, groups: int = 1) -> None:
    """A weight matrix needs at least one input and one output; ``groups``
    must divide both."""
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} = {value!r} must be an integer ≥ 1")
    if groups < 1 or in_features % groups or out_features % groups:
        raise ValueError(f"groups = {groups}: must divide in_features = {in_features} and out_features = {out_features}")


class PhotonicCore(nnx.Module):
    """The hardware under a layer: WDM grid, converters and noise.

    Args:
      hardware: the hardware model; its ``channel_spacing_nm`` becomes a
        trainable parameter.
      mode: ``"ideal"``, ``"expected"`` or ``"noisy"``.
      input_bits: DAC bits, 2..16 (default ``hardware.dac_bits``).
      output_bits: ADC bits, 2..16 (default ``hardware.adc_bits``).
      compensate: program linear crosstalk compensation.
      drift_K: temperature offset of the rings from calibration (K), scalar
        or per ring ``(num_channels,)``.
    """

    def __init__(
        self,
        hardware: hw.HardwareConfig | None = None,
        *,
        mode: Mode = "expected",
        input_bits: int | None = None,
        output_bits: int | None = None,
        compensate: bool = True,
        drift_K: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.hardware = hardware or hw.HardwareConfig()
        self.mode = _check_mode(mode)
        self.input_bits = input_bits or self.hardware.dac_bits
        self.output_bits = output_bits or self.hardware.adc_bits
        for name, bits in (("input_bits", self.input_bits), ("output_bits", self.output_bits)):
            if not 2 <= bits <= 16:
                raise ValueError(f"PhotonicCore.{name} = {bits}: converters take 2..16 bits")
        self.compensate = compensate
        self.drift_K = drift_K
        self.channel_spacing_nm = nnx.Param(jnp.float32(self.hardware.channel_spacing_nm))
        self.estimator = quant.DynamicRangeEstimator(hardware=self.hardware)
        self.input_range = RangeStat(self.estimator.init())
        self.output_range = RangeStat(self.estimator.init())
        self.rngs = rngs

    def config(self) -> hw.HardwareConfig:
        """The hardware with the current (possibly traced) channel spacing."""
        return self.hardware.replace(channel_spacing_nm=self.channel_spacing_nm[...])

    @staticmethod
    def _setting(parts: Sequence[Array], state: quant.RangeState) -> tuple[Array, Array]:
        """A converter's ``(full scale, signed)``: tracked once observed,
        else this batch's ``max|x|`` over the finite entries of ``parts`` (an
        infinite input saturates the converter; it does not set its range)
        and whether one of ``parts`` holds a negative value."""
        peak = functools.reduce(jnp.maximum, [jnp.max(jnp.where(jnp.isfinite(p), jnp.abs(p), 0.0)) for p in parts])
        low = functools.reduce(jnp.minimum, [jnp.min(p) for p in parts])
        observed = state.count > 0
        return (jnp.where(observed, state.range, jax.lax.stop_gradient(peak)),
                jnp.where(observed, state.signed, jax.lax.stop_gradient(low) < 0))

    def product(
        self,
        x: Array,
        w: Array,
        *,
        observe: bool = False,
        key: Array | None = None,
        lowering: Conv2D | None = None,
        slot_order: Sequence[int] | None = None,
    ) -> Array:
        """``x·W`` on the core; ``w`` ``(in, out)`` already weight-quantized
        (the transpose of the bank's ``(out, in)`` matrix, the layout of
        ``nnx.Linear``'s kernel). With ``w`` ``(groups, in, out)`` and ``x``
        ``(groups, ..., in)``, each group is a bank of its own on input
        tiles of its own (a grouped convolution), behind the layer's one DAC
        and one ADC range.

        The DAC is unsigned (``2^b − 1`` levels over ``[0, range]``) for
        inputs that are never negative, such as those after a ReLU, and
        signed otherwise; the ADC after the balanced detectors is signed.

        Args:
          x: ``(..., in)``; with a ``lowering``, images ``(N, H, W, C)``
            whose patches (``(N, H', W', in)``) the DACs convert.
          w: ``(in, out)`` or ``(groups, in, out)``, the programmed
            (quantized) weights.
          observe: update the DAC and ADC range trackers with this batch.
          key: noise key for ``"noisy"`` mode; default, the next key of the
            ``noise`` stream (pass keys explicitly inside ``jax.vmap``).
          lowering: the convolution whose patch matrix is the input.
          slot_order: input ``slot_order[s]`` rides on wavelength slot ``s``
            (default the identity): the product is the same, the crosstalk
            follows the slots.
        """
        if self.mode == "ideal":
            return kernels.matmul(x, w) if lowering is None else lowering(x, w)
        contract = kernels.matmul if lowering is None else functools.partial(lowering, exact=True)
        config = self.config()
        parts = [x] if lowering is None else lowering.dac_inputs(x)
        if observe:
            stream = x if lowering is None else lowering.patches(x)
            self.input_range.set_value(self.estimator.update(self.input_range.get_value(), stream))
        full_scale, signed = self._setting(parts, self.input_range.get_value())
        x_q = quant.fake_convert(x, full_scale, self.input_bits, signed)
        detuning = None
        if not (isinstance(self.drift_K, (int, float)) and self.drift_K == 0):
            drift = jnp.broadcast_to(jnp.asarray(self.drift_K, jnp.float32), (config.num_channels,))
            detuning = hw.thermal_drift_nm(config, drift)
        def program(bank_weights: Array) -> hw.ProgrammedBank:
            return hw.program_bank(bank_weights, config, ring_detuning_nm=detuning, compensate=self.compensate)

        program = program if w.ndim == 2 else jax.vmap(program)
        if slot_order is None:
            bank = program(w)
            effective = bank.effective
        else:
            order = np.asarray(slot_order)
            bank = program(jnp.take(w, order, axis=-2))
            effective = jnp.take(bank.effective, np.argsort(order), axis=-2)
        y = contract(x_q, effective)
        if self.mode == "noisy":
            key = self.rngs.noise() if key is None else key
            sigma = hw.detector_noise_std(config, w.shape[-2], full_scale, bank.full_scale)
            sigma = sigma if w.ndim == 2 else sigma[:, None, :]
            y = y + sigma * kernels.standard_normal(key, y.shape, y.dtype)
        if observe:
            self.output_range.set_value(self.estimator.update(self.output_range.get_value(), y))
        return quant.fake_convert(y, self._setting([y], self.output_range.get_value())[0], self.output_bits)

    def pairwise(self, a: Array, b: Array, *, transpose_b: bool = False) -> Array:
        """``a·b`` (or ``a·bᵀ``) over the last two axes, batched over the
        leading ones, with both operands activations: ``b`` is programmed
        into the banks of each product, ``a`` set through the DACs.

        Args:
          a: ``(..., m, k)``.
          b: ``(..., k, n)``, or ``(..., n, k)`` with ``transpose_b``, with
            the same leading axes as ``a``.
        """
        if self.mode == "ideal":
            return kernels.matmul(a, b, transpose_b=transpose_b)
        lead = a.shape[:-2]
        flat_a, flat_b = a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:])
        if transpose_b:
            flat_b = flat_b.swapaxes(-1, -2)
        if self.mode == "noisy":
            keys = jax.random.split(self.rngs.noise(), flat_a.shape[0])
            y = jax.vmap(lambda a, b, key: self.product(a, b, key=key))(flat_a, flat_b, keys)
        else:
            y = jax.vmap(self.product)(flat_a, flat_b)
        return y.reshape(lead + y.shape[-2:])


def attention(
    core: PhotonicCore, q: Array, k: Array, v: Array, *, scale: float, causal: bool = False, mask: Array | None = None
) -> Array:
    """``softmax(q·kᵀ·scale + mask)·v`` with both products on ``core``.

    Args:
      q: ``(..., T, d)`` queries; k: ``(..., S, d)`` keys; v: ``(..., S, d_v)``.
      scale: logit scale, usually ``1/√d``.
      causal: query ``t`` sees keys ``0..=t`` (torch's ``is_causal``). With
        ``T = S`` and no mask this runs the fused native causal softmax.
      mask: broadcastable to ``(..., T, S)``; boolean (True = visible) or
        additive float.
    """
    scores = core.pairwise(q, k, transpose_b=True).astype(jnp.float32)
    t, s = scores.shape[-2:]
    if causal and mask is None and t == s:
        probs = kernels.causal_softmax(scores, scale)
    else:
        logits = scores * scale
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits, -jnp.inf)
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf) if mask.dtype == jnp.bool_ else logits + mask
        probs = jax.nn.softmax(logits, axis=-1)
    return core.pairwise(probs.astype(v.dtype), v)


def photonic_cores(model: nnx.Module) -> list[PhotonicCore]:
    """Every :class:`PhotonicCore` in ``model``, each once."""
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, PhotonicCore)]


def set_mode(model: nnx.Module, mode: Mode) -> nnx.Module:
    """Switches every core of ``model`` to ``mode`` (in place); returns ``model``."""
    mode = _check_mode(mode)
    for core in photonic_cores(model):
        core.mode = mode
    return model


def set_compensation(model: nnx.Module, enabled: bool) -> nnx.Module:
    """Turns linear crosstalk compensation on or off in every core of
    ``model`` (in place); returns ``model``."""
    for core in photonic_cores(model):
        core.compensate = bool(enabled)
    return model


class QuantizedWeights(nnx.Module):
    """A layer whose weight matrix ``(out, in)`` sits in a ring bank, with
    per-output-channel LSQ scales. Subclasses define ``weight_matrix()`` and
    hold their ``core``.

    The scales are trained as their logarithms (``log_weight_scale``): a
    quantization step stays positive by construction, and optimizer steps
    change it by a relative amount, whatever its size.
    """

    def _init_scales(self, w: Array, bits: int) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
            raise ValueError(f"weight_bits = {bits!r} is out of range: allowed 1..16")
        self.weight_bits = int(bits)
        self.slot_order: tuple[int, ...] | None = None  # inputs in WDM slot order
        self.log_weight_scale = nnx.Param(jnp.log(self._minmax_scale(w)))

    def _minmax_scale(self, w: Array) -> Array:
        return quant.minmax_scale(w, self.weight_bits)

    def scale(self) -> Array:
        """The quantization step of each output channel (weight units)."""
        return jnp.exp(self.log_weight_scale[...])

    def set_scale(self, scale: Array) -> None:
        """Sets the steps (positive, weight units)."""
        self.log_weight_scale[...] = jnp.log(jnp.asarray(scale, jnp.float32))

    def reset_scales(self) -> None:
        """Sets the scales to the min-max choice for the current weights
        (after new weights are loaded)."""
        self.set_scale(self._minmax_scale(self.weight_matrix()))

    def quantized(self, w: Array) -> Array:
        """The weights ``w`` ``(out, in)`` on the codes of the current scales."""
        return self.quantized_kernel(w.T).T

    def quantized_kernel(self, kernel: Array) -> Array:
        """The weights ``kernel`` ``(in, out)`` (the transposed matrix) on
        the codes of the current scales."""
        return quant.lsq_quant(kernel, self.scale().T, self.weight_bits)

    def _on_core(self, x: Array, kernel: Array, observe: bool, lowering: Conv2D | None = None) -> Array:
        """``x·W`` on the core, ``kernel`` ``(in, out)``, with the inputs in
        their planned slots (``slot_order``, set by
        :meth:`lumijax.wdm.WDMMap.apply`)."""
        return self.core.product(x, self.quantized_kernel(kernel), observe=observe, lowering=lowering,
                                 slot_order=self.slot_order)

    def weight_matrix(self) -> Array:
        """The weights as the core holds them, ``(out, in)``."""
        raise NotImplementedError

    def set_slot_order(self, order: Sequence[int] | None) -> None:
        """Places input ``order[s]`` on wavelength slot ``s`` (``None``: the
        identity); ``order`` must be a permutation of the inputs."""
        if order is not None:
            fan_in = self.weight_matrix().shape[1]
            order = tuple(int(i) for i in order)
            if sorted(order) != list(range(fan_in)):
                raise ValueError(f"a slot order must be a permutation of the {fan_in} inputs, got {len(order)} entries {order[:8]}…")
        self.slot_order = order

    def calibrate(self, hardware_state: dict, activations: Array | None = None) -> quant.QuantParams:
        """Sets the scales to the adaptive (hardware-aware) choice for the
        hardware state (see :meth:`~lumijax.quant.WeightQuantizer.calibrate`)."""
        quantizer = quant.WeightQuantizer(bits=self.weight_bits, hardware=self.core.hardware)
        params = quantizer.calibrate(self.weight_matrix(), hardware_state, activations)
        self.set_scale(params.scale)
        return params


class OpticalLinear(QuantizedWeights):
    """``y = x·W + b`` with the product on the photonic core.

    Parameters match ``nnx.Linear``: ``kernel`` ``(in, out)`` and ``bias``
    ``(out,)``; ``"ideal"`` mode is exactly ``nnx.Linear``'s result.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        weight_bits: int = 8,
        core: PhotonicCore | None = None,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features)
        linear = nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs)
        self.kernel = linear.kernel
        self.bias = linear.bias if use_bias else None
        self.core = core or PhotonicCore(rngs=rngs)
        self._init_scales(self.weight_matrix(), weight_bits)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        if self.core.mode == "ideal":
            y = kernels.matmul(x, self.kernel[...])
        else:
            y = self._on_core(x, self.kernel[...], observe)
        return y + self.bias[...] if self.bias is not None else y

    def weight_matrix(self) -> Array:
        """The weights as the core holds them, ``(out, in)``."""
        return self.kernel[...].T


class TiedOpticalLinear(QuantizedWeights):
    """``y = x·Eᵀ`` with ``E`` ``(out, in)`` the table of an ``nnx.Embed``:
    the output head of a language model whose weights are tied to its token
    embedding. The table is shared, not copied."""

    def __init__(self, embedding: nnx.Embed, *, weight_bits: int = 8, core: PhotonicCore | None = None, rngs: nnx.Rngs):
        self.embedding = embedding
        self.core = core or PhotonicCore(rngs=rngs)
        self._init_scales(self.weight_matrix(), weight_bits)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        if self.core.mode == "ideal":
            return kernels.matmul(x, self.weight_matrix(), transpose_b=True)
        return self._on_core(x, self.weight_matrix().T, observe)

    def weight_matrix(self) -> Array:
        return self.embedding.embedding[...]


class OpticalConv(QuantizedWeights):
    """2-D convolution (NHWC) with the product on the photonic core.

    Each output pixel is a dot product over a ``(kh, kw, C_in)`` patch with
    the input-channel axis on the wavelengths (adjacent channels of one tap
    are adjacent carriers). Parameters match ``nnx.Conv``: ``kernel``
    ``(kh, kw, C_in, C_out)``, ``bias`` ``(C_out,)``; ``padding`` is
    ``"SAME"``, ``"VALID"`` or explicit zero padding, ``dilation`` the
    pixels between taps (see :class:`~lumijax.conv.Conv2D`, which lowers
    every product, ideal or not, to XLA per shape).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        *,
        padding: str | tuple = "SAME",
        use_bias: bool = True,
        groups: int = 1,
        dilation: int | tuple[int, int] = 1,
        weight_bits: int = 8,
        core: PhotonicCore | None = None,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features, groups)
        self.geometry = Conv2D(kernel_size, strides, padding, dilation=dilation)
        self.strides = self.geometry.strides
        self.groups = groups
        self.conv = nnx.Conv(in_features, out_features, self.geometry.kernel_size, self.strides, padding=padding,
                             feature_group_count=groups, kernel_dilation=self.geometry.dilation, use_bias=use_bias,
                             rngs=rngs)
        self.core = core or PhotonicCore(rngs=rngs)
        self._init_scales(self.weight_matrix(), weight_bits)

    def _kernel_matrix(self) -> Array:
        """The kernel as ``(kh·kw·C_in/groups, C_out)`` (patch order,
        ``C_in`` fastest): a reshape, no copy."""
        kernel = self.conv.kernel[...]
        return kernel.reshape(-1, kernel.shape[-1])

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        """``x`` ``(N, H, W, C_in)`` → ``(N, H', W', C_out)``."""
        if self.groups > 1:
            y = self._grouped(x, observe)
        elif self.core.mode == "ideal":
            y = self.geometry(x, self._kernel_matrix())
        else:
            y = self._on_core(x, self._kernel_matrix(), observe, lowering=self.geometry)
        return y + self.conv.bias[...] if self.conv.bias is not None else y

    def _grouped(self, x: Array, observe: bool) -> Array:
        """A grouped convolution without its bias: group ``g`` multiplies
        the patches of input channels ``g·C_in/groups …`` by its own
        ``(kh·kw·C_in/groups, C_out/groups)`` bank (a depthwise 3×3: a
        9-tap product per channel)."""
        if self.core.mode == "ideal":
            kernel = self.conv.kernel[...]
            dtype = jnp.promote_types(x.dtype, kernel.dtype)
            return jax.lax.conv_general_dilated(
                x.astype(dtype), kernel.astype(dtype), self.strides, self.geometry.pads(x.shape[1:3]),
                rhs_dilation=self.geometry.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups)
        groups, taps = self.groups, self.geometry.taps
        patches = self.geometry.patches(x)
        n, ho, wo, _ = patches.shape
        per_group = patches.reshape(n, ho, wo, taps, groups, -1).transpose(4, 0, 1, 2, 3, 5).reshape(groups, n * ho * wo, -1)
        kernel = self.quantized_kernel(self._kernel_matrix())
        banks = kernel.reshape(kernel.shape[0], groups, -1).transpose(1, 0, 2)
        y = self.core.product(per_group, banks, observe=observe, slot_order=self.slot_order)
        return y.transpose(1, 0, 2).reshape(n, ho, wo, -1)

    def weight_matrix(self) -> Array:
        """The weights as the core holds them, ``(out, kh·kw·C_in/groups)``
        (one row per output; a row's inputs are its group's patches)."""
        return self._kernel_matrix().T


class OpticalConvTranspose(QuantizedWeights):
    """Transposed 2-D convolution (NHWC, torch's ``ConvTranspose2d``) with
    the products on the photonic core.

    Every input pixel's ``C_in`` values (on the wavelengths) meet a bank of
    ``kh·kw·C_out`` rows, one per output channel and tap; the taps'
    detected and converted partial sums are then added into the output
    image electronically (:meth:`~lumijax.conv.ConvTranspose2D.overlap_add`).
    With ``groups``, group ``g``'s inputs meet a bank of its own. Parameters:
    ``kernel`` ``(C_in, kh, kw, C_out/groups)`` (torch's weight with its
    output axis last), ``bias`` ``(C_out,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        *,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        weight_bits: int = 8,
        core: PhotonicCore | None = None,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features, groups)
        self.geometry = ConvTranspose2D(kernel_size, strides, padding, output_padding, dilation)
        self.groups = groups
        shape = (in_features, *self.geometry.kernel_size, out_features // groups)
        fan_in = in_features // groups * self.geometry.taps
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), shape) / np.sqrt(fan_in))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
        self.core = core or PhotonicCore(rngs=rngs)
        self._init_scales(self.weight_matrix(), weight_bits)

    def _banks(self) -> Array:
        """The kernel as one ``(C_in/groups, kh·kw·C_out/groups)`` matrix
        per group: ``(groups, C_in/groups, taps·C_out/groups)``."""
        kernel = self.kernel[...]
        return kernel.reshape(self.groups, kernel.shape[0] // self.groups, -1)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        """``x`` ``(N, H, W, C_in)`` → ``(N, H', W', C_out)``."""
        if x.ndim != 4 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"takes NHWC images of {self.kernel.shape[0]} channels, got shape {x.shape}")
        n, h, w, _ = x.shape
        groups, (kh, kw) = self.groups, self.geometry.kernel_size
        banks = self._banks()
        if self.core.mode != "ideal":
            fan_in = banks.shape[1]
            banks = self.quantized_kernel(banks.transpose(1, 0, 2).reshape(fan_in, -1)).reshape(fan_in, groups, -1)
            banks = banks.transpose(1, 0, 2)
        if groups == 1:
            pixels = x.reshape(n * h * w, -1)
            y = kernels.matmul(pixels, banks[0]) if self.core.mode == "ideal" else self.core.product(
                pixels, banks[0], observe=observe, slot_order=self.slot_order)
            y = y[None]
        else:
            pixels = x.reshape(n * h * w, groups, -1).transpose(1, 0, 2)
            y = jnp.matmul(pixels, banks) if self.core.mode == "ideal" else self.core.product(
                pixels, banks, observe=observe, slot_order=self.slot_order)
        y = y.reshape(groups, n, h, w, kh, kw, -1).transpose(1, 2, 3, 4, 5, 0, 6).reshape(n, h, w, kh, kw, -1)
        y = self.geometry.overlap_add(y)
        return y + self.bias[...] if self.bias is not None else y

    def weight_matrix(self) -> Array:
        """The weights as the core holds them, ``(groups·kh·kw·C_out/groups,
        C_in/groups)``: group ``g``'s rows after group ``g − 1``'s, a row's
        inputs its group's channels of one pixel."""
        banks = self._banks()
        return banks.transpose(1, 0, 2).reshape(banks.shape[1], -1).T


class ComplexOpticalLinear(nnx.Module):
    """Coherent ``y = x·Wᵀ`` with ``W = a·e^{iφ}`` on the native complex GEMM.

    Non-ideal modes set the amplitudes with ``amplitude_bits`` (over
    ``[0, max a]``) and the phases with ``phase_bits`` (over ``[0, 2π)``),
    and ``"noisy"`` adds amplitude noise (relative std
    ``amplitude_noise``) and phase noise (std ``phase_noise_rad``) from the
    ``noise`` stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype=jnp.complex64,
        mode: Mode = "expected",
        amplitude_bits: int = 8,
        phase_bits: int = 8,
        amplitude_noise: float = 0.0,
        phase_noise_rad: float = 0.0,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features)
        if jnp.dtype(dtype) not in (jnp.complex64, jnp.complex128):
            raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
        real = jnp.float32 if jnp.dtype(dtype) == jnp.complex64 else jnp.float64
        init = jax.random.normal(rngs.params(), (2, out_features, in_features), real) / jnp.sqrt(2.0 * in_features)
        w = init[0] + 1j * init[1]
        self.dtype = jnp.dtype(dtype)
        self.amplitude = nnx.Param(jnp.abs(w).astype(real))
        self.phase = nnx.Param(jnp.angle(w).astype(real))
        self.mode = _check_mode(mode)
        self.amplitude_bits, self.phase_bits = amplitude_bits, phase_bits
        self.amplitude_noise, self.phase_noise_rad = amplitude_noise, phase_noise_rad
        self.rngs = rngs

    def weight(self) -> Array:
        """The complex weights the hardware applies, ``(out, in)``."""
        a, phi = self.amplitude[...], self.phase[...]
        if self.mode != "ideal":
            a_step = jax.lax.stop_gradient(jnp.max(a)) / ((1 << self.amplitude_bits) - 1)
            a = a_step * quant.round_ste(a / a_step)
            phi_step = 2 * jnp.pi / (1 << self.phase_bits)
            phi = phi_step * quant.round_ste(phi / phi_step)
        if self.mode == "noisy":
            key_a, key_p = jax.random.split(self.rngs.noise())
            a = a * (1.0 + self.amplitude_noise * jax.random.normal(key_a, a.shape, a.dtype))
            phi = phi + self.phase_noise_rad * jax.random.normal(key_p, phi.shape, phi.dtype)
        return (a * jnp.exp(1j * phi)).astype(self.dtype)

    def __call__(self, x: Array) -> Array:
        return kernels.matmul(jnp.asarray(x, self.dtype), self.weight().T)


class PhotonicAttention(nnx.Module):
    """Causal multi-head self-attention with its products on the core.

    The projections are :class:`OpticalLinear`; the score product ``QKᵀ``
    and the mixing ``AV`` run on the core too (both operands are
    activations, quantized by the DACs), and the causal softmax on the fused
    native kernel.
    """

    def __init__(self, features: int, num_heads: int, *, weight_bits: int = 8, core: PhotonicCore | None = None, rngs: nnx.Rngs):
        if features % num_heads:
            raise ValueError(f"features = {features} is not divisible by num_heads = {num_heads}")
        self.core = core or PhotonicCore(rngs=rngs)
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        make = lambda: OpticalLinear(features, features, weight_bits=weight_bits, core=self.core, rngs=rngs)
        self.query, self.key, self.value, self.out = make(), make(), make(), make()

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        """``x`` ``(batch, T, features)`` → ``(batch, T, features)``."""
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = split(self.query(x, observe=observe))
        k = split(self.key(x, observe=observe))
        v = split(self.value(x, observe=observe))
        mixed = attention(self.core, q, k, v, scale=1.0 / float(self.head_dim) ** 0.5, causal=True)
        return self.out(mixed.transpose(0, 2, 1, 3).reshape(b, t, -1), observe=observe)
