"""Hardware-aware quantization (HWAQ) of weights and activations.

A photonic core holds weights as low-bit codes and feeds activations
through DACs; its detector noise grows with the full scale those codes
span. The quantizer therefore chooses its scales on the *output* error of
quantization plus hardware noise, not on the weights' min-max range.

Conventions: weights are ``(out, in)`` (``in`` is the wavelength axis);
weight codes are signed, ``q ∈ [−2^(b−1), 2^(b−1) − 1]``, with
``W ≈ scale·(q − zero_point)`` per output channel (or per tensor); the
zero point is 0 for symmetric quantization.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lumijax import hardware as hw

Array = jax.Array

# hardware_state keys and their physical ranges (open intervals).
_STATE_RANGES: dict[str, tuple[float, float, str]] = {
    "snr_db": (0.0, 200.0, "dB"),
    "temperature_K": (0.0, 1000.0, "K"),
    "power_budget_mW": (0.0, 1.0e4, "mW"),
    "channel_spacing_nm": (0.0, 100.0, "nm"),
}


class QuantParams(NamedTuple):
    """Scale, zero point and width of a quantized tensor.

    Attributes:
      scale: positive float32, shape ``(out, 1)`` per channel or ``()``.
      zero_point: int32 of the scale's shape (0 when symmetric).
      bits: code width, 1..16.
    """

    scale: Array
    zero_point: Array
    bits: int

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest code."""
        return code_range(self.bits)


def code_range(bits: int) -> tuple[int, int]:
    """Signed code range ``[−2^(b−1), 2^(b−1) − 1]`` of a ``bits``-wide code."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


# ---------------------------------------------------------------------------
# Quantize, dequantize, fake quantization


def quantize(w: Array, params: QuantParams) -> Array:
    """Codes ``clip(round(W/scale + zero_point))`` as int32."""
    lo, hi = params.code_range
    return jnp.clip(jnp.round(w / params.scale + params.zero_point), lo, hi).astype(jnp.int32)


def dequantize(codes: Array, params: QuantParams) -> Array:
    """``scale·(codes − zero_point)``."""
    return params.scale * (codes.astype(jnp.float32) - params.zero_point)


@jax.custom_vjp
def round_ste(x: Array) -> Array:
    """``round(x)`` whose gradient is the identity (straight-through)."""
    return jnp.round(x)


round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def fake_quant(w: Array, params: QuantParams) -> Array:
    """Quantize then dequantize, with the straight-through gradient.

    The gradient with respect to ``w`` is 1 where ``w`` rounds to a code
    inside the range and 0 where it is clipped. The
    scale and zero point get no gradient here; :func:`lsq_quant` learns a
    scale.
    """
    lo, hi = params.code_range
    return _fake_quant(w, params.scale, params.zero_point, jnp.float32(lo), jnp.float32(hi))


def fake_convert(x: Array, full_scale: Array, bits: int, signed: Array | bool = True) -> Array:
    """A DAC or ADC of ``bits`` (2..16) over ``full_scale``, fake-quantized
    with the straight-through gradient.

    Signed, the codes ``[−2^(b−1), 2^(b−1) − 1]`` span ``±full_scale``;
    unsigned (an intensity modulator's drive, whose light cannot be
    negative), the codes ``[0, 2^b − 1]`` span ``[0, full_scale]``, twice the
    levels, and negative values clip to 0. ``signed`` may be traced.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"converter bits = {bits} must be in 2..16")
    half = (1 << (bits - 1)) - 1
    hi = jnp.where(signed, jnp.float32(half), jnp.float32((1 << bits) - 1))
    lo = jnp.where(signed, jnp.float32(-half - 1), jnp.float32(0.0))
    scale = jnp.maximum(full_scale / hi, jnp.finfo(jnp.float32).tiny)
    return _fake_quant(x, scale, jnp.int32(0), lo, hi)


@jax.custom_vjp
def _fake_quant(w: Array, scale: Array, zero_point: Array, lo: Array, hi: Array) -> Array:
    return scale * (jnp.clip(jnp.round(w / scale + zero_point), lo, hi) - zero_point)


def _fake_quant_fwd(w, scale, zero_point, lo, hi):
    return _fake_quant(w, scale, zero_point, lo, hi), (w, scale, zero_point, lo, hi)


def _fake_quant_bwd(residuals, g):
    w, scale, zero_point, lo, hi = residuals
    # Inside: the value rounds to a code the range holds (so the end of the
    # range itself, reached up to rounding, passes the gradient).
    code = jnp.round(w / scale + zero_point)
    inside = (code >= lo) & (code <= hi)
    zero_point_grad = np.zeros(jnp.shape(zero_point), jax.dtypes.float0)
    return jnp.where(inside, g, 0.0), jnp.zeros_like(scale), zero_point_grad, jnp.zeros_like(lo), jnp.zeros_like(hi)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def lsq_quant(w: Array, scale: Array, bits: int, grad_scale: float | None = None) -> Array:
    """Symmetric fake quantization with a learnable scale (LSQ).

    Forward ``scale·clip(round(w/scale), qn, qp)``. Gradients (Esser et al.,
    2019): ``∂/∂w`` is the straight-through 1 inside the range, 0 outside;
    ``∂/∂scale`` is ``round(w/s) − w/s`` inside, ``qn`` or ``qp`` at the
    clipped ends, times ``grad_scale`` (default ``1/√(N·qp)``, ``N`` the
    elements per scale).
    """
    qn, qp = code_range(bits)
    return scale * jnp.clip(jnp.round(w / scale), qn, qp)


def _lsq_fwd(w, scale, bits, grad_scale):
    return lsq_quant(w, scale, bits, grad_scale), (w, scale)


def _lsq_bwd(bits, grad_scale, residuals, g):
    w, scale = residuals
    qn, qp = code_range(bits)
    v = w / scale
    inside = (v >= qn) & (v <= qp)
    grad_w = jnp.where(inside, g, 0.0)
    d_scale = jnp.where(inside, jnp.round(v) - v, jnp.clip(v, qn, qp))
    per_scale = w.size // max(scale.size, 1)
    factor = grad_scale if grad_scale is not None else 1.0 / math.sqrt(per_scale * qp)
    return grad_w, _sum_to_shape(g * d_scale * factor, scale.shape)


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """Sums ``x`` over the axes that broadcasting ``shape`` to it expanded."""
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1)
    return (jnp.sum(x, axis=axes, keepdims=True) if axes else x).reshape(shape)


lsq_quant.defvjp(_lsq_fwd, _lsq_bwd)


# ---------------------------------------------------------------------------
# Hardware state → SNR → bits


def _as_array(weights: Any, name: str = "weights") -> np.ndarray:
    """A jax, numpy or torch array as float32 numpy, validated."""
    if hasattr(weights, "detach") and hasattr(weights, "cpu"):  # torch.Tensor
        weights = weights.detach().cpu().numpy()
    array = np.asarray(weights)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a floating array, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return array.astype(np.float32)


def hardware_snr_db(hardware_state: Mapping[str, float], hardware: hw.HardwareConfig | None = None) -> float:
    """The SNR (dB) a ``hardware_state`` dict implies.

    ``snr_db`` is taken as given; otherwise the SNR follows the noise model
    of ``hardware`` (default :class:`HardwareConfig`) with its
    ``temperature_K``, its ``channel_spacing_nm`` and, from
    ``power_budget_mW``, the optical power per channel (the budget shared by
    ``num_channels``) replaced by the state's values.

    Raises:
      ValueError: an unknown key, NaN, or a value out of physical range,
        naming the key.
    """
    for key, value in hardware_state.items():
        if key not in _STATE_RANGES:
            raise ValueError(f"hardware_state: unknown key {key!r}; known keys are {sorted(_STATE_RANGES)}")
        lo, hi, unit = _STATE_RANGES[key]
        if not isinstance(value, (int, float, np.floating, np.integer)) or not lo < float(value) < hi:
            raise ValueError(f"hardware_state[{key!r}] = {value!r} is out of range: allowed ({lo:g}, {hi:g}) {unit}")
    if "snr_db" in hardware_state:
        return float(hardware_state["snr_db"])
    config = hardware or hw.HardwareConfig()
    changes: dict[str, Any] = {}
    if "temperature_K" in hardware_state:
        changes["temperature_K"] = float(hardware_state["temperature_K"])
    if "channel_spacing_nm" in hardware_state:
        changes["channel_spacing_nm"] = float(hardware_state["channel_spacing_nm"])
    if "power_budget_mW" in hardware_state:
        changes["laser_power_mW"] = float(hardware_state["power_budget_mW"]) / config.num_channels
    return float(hw.snr_db(config.replace(**changes)))


def bits_for_snr(snr_db: float, max_bits: int = 8) -> int:
    """Usable bits ``⌊(SNR_dB − 1.76)/6.02⌋`` within ``1..max_bits``."""
    return int(np.clip(math.floor((snr_db - 1.76) / 6.02), 1, max_bits))


# ---------------------------------------------------------------------------
# The weight quantizer


def _positive_steps(scale: Array) -> Array:
    """``scale`` with each zero step (an all-zero row: a pruned unit, a
    padding embedding) replaced by the largest step, or 1 where all are
    zero: a step far above float32's smallest normal, so that neither
    ``w/scale`` nor ``exp(log scale)`` meets a denormal the CPU flushes to
    zero."""
    largest = jnp.max(scale)
    return jnp.where(scale > 0, scale, jnp.where(largest > 0, largest, 1.0))


def _grid_scales(w: np.ndarray, bits: int, symmetric: bool, alpha: Array, per_channel: bool):
    """Scale and zero point for a clipping ratio ``alpha`` (broadcast)."""
    lo_code, hi_code = code_range(bits)
    axis = -1 if per_channel else None
    if symmetric:
        peak = jnp.max(jnp.abs(w), axis=axis, keepdims=per_channel)
        scale = _positive_steps(alpha * peak / hi_code)
        return scale, jnp.zeros_like(scale, dtype=jnp.int32)
    w_min = jnp.minimum(jnp.min(w, axis=axis, keepdims=per_channel), 0.0)
    w_max = jnp.maximum(jnp.max(w, axis=axis, keepdims=per_channel), 0.0)
    scale = _positive_steps(alpha * (w_max - w_min) / (hi_code - lo_code))
    zero = jnp.clip(jnp.round(lo_code - alpha * w_min / scale), lo_code, hi_code).astype(jnp.int32)
    return scale, zero


def minmax_scale(w: Array, bits: int) -> Array:
    """The symmetric min-max step of each output channel of ``w``
    ``(out, in)``: ``max|w_row| / (2^(bits−1) − 1)``, shape ``(out, 1)``.
    Traceable (no validation; see :class:`WeightQuantizer` for checked
    calibration)."""
    return _grid_scales(w, bits, True, 1.0, True)[0]


def output_error(
    w: Array,
    params: QuantParams,
    snr_db: float,
    fan_in_tiles: int,
    input_power: Array | None,
    input_full_scale2: Array,
    hessian: Array | None = None,
    codes: Array | None = None,
) -> Array:
    """Expected squared output error of one quantized layer, per output channel.

    ``E‖(W − Ŵ)x‖² + noise``: the quantization term is ``σ_x²‖w − ŵ‖²`` for
    inputs of power ``σ_x²`` (or ``(w − ŵ)ᵀH(w − ŵ)`` with the input
    second moment ``H = E[xxᵀ]``), the detector noise term
    ``tiles·x_fs²·w_fs²/SNR`` with ``w_fs`` the largest programmed ``|ŵ|``
    (the full scale the codes span). ``Ŵ`` is ``w`` rounded to nearest, or
    the given ``codes``.
    """
    lo, hi = params.code_range
    err = w - (fake_quant(w, params) if codes is None else dequantize(codes, params))
    if hessian is None:
        quant = input_power * jnp.sum(err * err, axis=-1)
    else:
        quant = jnp.einsum("ok,kl,ol->o", err, hessian, err)
    span = jnp.maximum(jnp.abs(lo - params.zero_point), jnp.abs(hi - params.zero_point))
    full_scale = (params.scale * span).reshape(-1)
    noise = fan_in_tiles * input_full_scale2 * full_scale**2 / 10.0 ** (snr_db / 10.0)
    return quant + noise


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
    """Chooses scales and zero points for a weight matrix on the hardware.

    Args:
      bits: code width; None takes it from the hardware SNR.
      granularity: ``"per_channel"`` (one scale per output row) or ``"per_tensor"``.
      symmetric: zero point 0 and codes centred on 0.
      method: ``"adaptive"`` (minimise the expected output error of
        quantization plus hardware noise) or ``"minmax"`` (scale from the
        largest weight).
      hardware: the hardware model behind the SNR (default ``HardwareConfig()``).
      grid: clipping ratios the adaptive search tries, in ``(0, 1]``.
    """

    bits: int | None = None
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    symmetric: bool = True
    method: Literal["adaptive", "minmax"] = "adaptive"
    hardware: hw.HardwareConfig | None = None
    grid: int = 100

    def __post_init__(self) -> None:
        if self.bits is not None and not (isinstance(self.bits, int) and 1 <= self.bits <= 16):
            raise ValueError(f"WeightQuantizer.bits = {self.bits!r} must be None or an integer in 1..16")
        if self.granularity not in ("per_channel", "per_tensor"):
            raise ValueError(f"WeightQuantizer.granularity = {self.granularity!r}: use 'per_channel' or 'per_tensor'")
        if self.method not in ("adaptive", "minmax"):
            raise ValueError(f"WeightQuantizer.method = {self.method!r}: use 'adaptive' or 'minmax'")

    def _bits(self, snr_db: float) -> int:
        if self.bits is not None:
            return self.bits
        config = self.hardware or hw.HardwareConfig()
        return bits_for_snr(snr_db, min(config.dac_bits, config.adc_bits))

    def calibrate(
        self,
        weights: Any,
        hardware_state: Mapping[str, float],
        activations: Any | None = None,
    ) -> QuantParams:
        """Scales and zero points for ``weights`` ``(out, in)`` on the hardware.

        The adaptive objective, per output channel, is the expected squared
        output error of :func:`output_error`: quantization error weighted by
        the input power (or by the input second moment ``XᵀX/N`` of the
        calibration ``activations`` ``(N, in)``) plus the detector noise,
        which grows with the programmed full scale. The clipping ratio is
        searched on a grid that includes 1 (min-max), so the objective is
        never above min-max's.
        """
        w = jnp.asarray(_as_array(weights))
        if w.ndim != 2:
            raise ValueError(f"weights must have shape (out, in), got {w.shape}")
        snr_db = hardware_snr_db(hardware_state, self.hardware)
        bits = self._bits(snr_db)
        per_channel = self.granularity == "per_channel"
        if self.method == "minmax":
            scale, zero = _grid_scales(w, bits, self.symmetric, 1.0, per_channel)
            return QuantParams(scale, zero, bits)
        config = self.hardware or hw.HardwareConfig()
        tiles = -(-w.shape[1] // config.num_channels)
        if activations is None:
            # Inputs uniform on the DAC range: power x_fs²/3.
            input_power, full_scale2, hessian = jnp.float32(1.0 / 3.0), jnp.float32(1.0), None
        else:
            x = jnp.asarray(_as_array(activations, "activations")).reshape(-1, w.shape[1])
            hessian = x.T @ x / x.shape[0]
            input_power, full_scale2 = None, jnp.max(jnp.abs(x)) ** 2

        def objective(alpha):
            scale, zero = _grid_scales(w, bits, self.symmetric, alpha, per_channel)
            scale_b = jnp.broadcast_to(scale, (w.shape[0], 1))
            zero_b = jnp.broadcast_to(zero, (w.shape[0], 1))
            err = output_error(w, QuantParams(scale_b, zero_b, bits), snr_db, tiles, input_power, full_scale2, hessian)
            return err if per_channel else jnp.full_like(err, jnp.sum(err))

        # coarse over (0, 1], fine near 1 where high bit widths land
        alphas = jnp.concatenate([jnp.linspace(1.0 / self.grid, 1.0, self.grid), jnp.linspace(0.8, 1.0, 81)])
        errors = jax.lax.map(objective, alphas)  # (grid, out)
        best = alphas[jnp.argmin(errors, axis=0)]  # (out,)
        alpha = best[:, None] if per_channel else best[0]
        scale, zero = _grid_scales(w, bits, self.symmetric, alpha, per_channel)
        return QuantParams(scale, zero, bits)

    def quantize_weights(self, weights: Any, hardware_state: Mapping[str, float], activations: Any | None = None) -> tuple[Array, QuantParams]:
        """Codes and parameters.

        With ``activations``, the codes are rounded with error feedback on
        the layer output (:func:`gptq_round`), and since that rounding
        changes which clipping pays, each channel's scale is refined among
        multiples of the calibrated one (never past min-max) by the same
        output-error objective evaluated on the rounded codes.
        """
        params = self.calibrate(weights, hardware_state, activations)
        w = jnp.asarray(_as_array(weights))
        if activations is None:
            return quantize(w, params), params
        x = jnp.asarray(_as_array(activations, "activations")).reshape(-1, w.shape[1])
        hessian = x.T @ x / x.shape[0]
        if self.method == "minmax" or self.granularity != "per_channel":
            return gptq_round(w, params, hessian), params
        snr_db = hardware_snr_db(hardware_state, self.hardware)
        tiles = -(-w.shape[1] // (self.hardware or hw.HardwareConfig()).num_channels)
        full_scale2 = jnp.max(jnp.abs(x)) ** 2
        ceiling, _ = _grid_scales(w, params.bits, self.symmetric, 1.0, True)
        best = None
        for factor in (0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2):
            scale = jnp.minimum(params.scale * factor, ceiling)
            candidate = QuantParams(scale, params.zero_point, params.bits)
            codes = gptq_round(w, candidate, hessian)
            error = output_error(w, candidate, snr_db, tiles, None, full_scale2, hessian, codes)
            if best is None:
                best = (error, codes, scale)
            else:
                better = error < best[0]
                best = (jnp.where(better, error, best[0]), jnp.where(better[:, None], codes, best[1]), jnp.where(better[:, None], scale, best[2]))
        return best[1], QuantParams(best[2], params.zero_point, params.bits)


def gptq_round(w: Array, params: QuantParams, hessian: Array, damping: float = 0.01) -> Array:
    """Rounds codes column by column, feeding each column's error forward.

    GPTQ/OBQ (Frantar et al., 2022): with ``H = E[xxᵀ]`` (damped by
    ``damping·mean(diag H)``) and ``U`` the upper Cholesky factor of ``H⁻¹``,
    after rounding column ``j`` the not-yet-rounded columns absorb
    ``(w_j − ŵ_j)/U_jj · U_j,j+1:``, which minimises the layer-output error
    ``(w − ŵ)ᵀH(w − ŵ)`` greedily.

    Returns:
      int32 codes, shape of ``w``.
    """
    k = w.shape[1]
    h = hessian + damping * jnp.mean(jnp.diag(hessian)) * jnp.eye(k, dtype=hessian.dtype)
    h_inv = jnp.linalg.inv(h)
    upper = jnp.linalg.cholesky(h_inv).T  # H⁻¹ = UᵀU, U upper triangular
    lo, hi = params.code_range
    scale = jnp.broadcast_to(params.scale, (w.shape[0], 1))[:, 0]
    zero = jnp.broadcast_to(params.zero_point, (w.shape[0], 1))[:, 0]

    def column(j, state):
        w_cur, codes = state
        col = w_cur[:, j]
        q = jnp.clip(jnp.round(col / scale + zero), lo, hi)
        err = (col - scale * (q - zero)) / upper[j, j]
        later = (jnp.arange(k) > j).astype(w.dtype)
        w_cur = w_cur - err[:, None] * (upper[j] * later)[None, :]
        return w_cur, codes.at[:, j].set(q.astype(jnp.int32))

    _, codes = jax.lax.fori_loop(0, k, column, (w, jnp.zeros(w.shape, jnp.int32)))
    return codes


# ---------------------------------------------------------------------------
# Activation ranges


class RangeState(NamedTuple):
    """State of :class:`DynamicRangeEstimator` (a pytree, usable in ``jit``).

    Attributes:
      range: EMA of the robust absolute range of the activations.
      noise_std: detector noise std in activation units at that range.
      count: updates so far.
      minimum: the smallest activation seen; when it is not negative, the
        converter can be unsigned (see :func:`fake_convert`).
    """

    range: Array
    noise_std: Array
    count: Array
    minimum: Array

    @property
    def signed(self) -> Array:
        """Whether a negative activation has been seen (bool, traced)."""
        return self.minimum < 0


@dataclasses.dataclass(frozen=True)
class DynamicRangeEstimator:
    """Tracks activation ranges for the DACs.

    The range is an exponential moving average (``momentum``) of the
    ``percentile``-th percentile of ``|x|`` — robust to rare outliers that a
    max would chase; the first update takes the batch value. The noise level
    is the detector noise ``range/√SNR`` of ``hardware``. The minimum is the
    exact running minimum, so that one negative value makes the range signed.
    """

    momentum: float = 0.9
    percentile: float = 99.9
    hardware: hw.HardwareConfig | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"DynamicRangeEstimator.momentum = {self.momentum} must be in [0, 1)")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"DynamicRangeEstimator.percentile = {self.percentile} must be in (0, 100]")

    def init(self) -> RangeState:
        return RangeState(jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0), jnp.float32(0.0))

    def update(self, state: RangeState, x: Array) -> RangeState:
        """The state after observing the batch ``x`` (any shape)."""
        x = jax.lax.stop_gradient(x).astype(jnp.float32)
        # NaN and ±inf entries set no range (a converter saturates on them).
        batch = jnp.nan_to_num(jnp.nanpercentile(jnp.where(jnp.isfinite(x), jnp.abs(x), jnp.nan), self.percentile))
        first = state.count == 0
        value = jnp.where(first, batch, self.momentum * state.range + (1.0 - self.momentum) * batch)
        lowest = jnp.min(jnp.where(jnp.isnan(x), jnp.inf, x))
        minimum = jnp.where(first, lowest, jnp.minimum(state.minimum, lowest))
        snr = hw.snr(self.hardware or hw.HardwareConfig())
        return RangeState(value, value / jnp.sqrt(snr), state.count + 1, minimum)
