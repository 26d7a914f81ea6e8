"""Physics of a microring weight bank fed by WDM carriers.

Input element ``j`` of a dot product rides on carrier ``λ_j``; ring ``i`` of a
bank, tuned to ``λ_i``, weights it, and a balanced photodetector sums the
bank. Everything here is written in JAX, so it runs under ``jit``, ``vmap``
and ``grad``, and the tunable fields of :class:`HardwareConfig` (channel
spacing, temperature, optical power, ...) can be traced.

Conventions
-----------
* Wavelengths and detunings in nm, optical power in mW, currents in A,
  current variances in A², bandwidth in GHz, temperature in K.
* ``C[j, i]`` is the drop-port response of ring ``i`` to carrier ``j``; the
  weights the hardware applies are ``W_eff = W · Cᵀ`` along the input
  (wavelength) axis of ``W`` (shape ``(out, in)``).
* An input axis longer than ``num_channels`` is cut into tiles of
  ``num_channels`` wavelengths (one free spectral range each); carriers of
  different tiles never share a bank, so coupling acts within a tile only.
* SNR is that of one channel at full scale at the detector: signal current
  ``I = R·P`` against shot, thermal, RIN and residual crosstalk noise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lumijax import kernels

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

ELEMENTARY_CHARGE_C = 1.602176634e-19
BOLTZMANN_J_PER_K = 1.380649e-23

# (field, lower, upper, lower inclusive, upper inclusive) for the float fields.
# (low, high, low included, high included). The bounds lie far past any
# photonic core (wavelengths of 0.1 to 100 µm, Q up to 10¹², a kilowatt per
# channel, a petahertz receiver) yet keep every crosstalk and noise term
# finite in float32, so the SNR of a valid configuration is always a number.
_FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "wavelength_nm": (100.0, 1e5, True, True),
    "quality_factor": (0.0, 1e12, False, True),
    "channel_spacing_nm": (0.0, 1e6, False, True),
    "fsr_nm": (0.0, 1e6, False, True),
    "responsivity_A_per_W": (0.0, 1e3, False, True),
    "laser_power_mW": (0.0, 1e6, False, True),
    "bandwidth_GHz": (0.0, 1e6, False, True),
    "load_resistance_ohm": (0.0, 1e12, False, True),
    "temperature_K": (0.0, 1e4, False, True),
    "rin_db_per_hz": (-300.0, 0.0, True, False),
    "thermal_coupling": (0.0, 1.0, True, False),
    "thermo_optic_nm_per_K": (-1e3, 1e3, True, True),
    "crosstalk_suppression_db": (0.0, 300.0, True, True),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "num_channels": (1, 4096),
    "dac_bits": (2, 16),
    "adc_bits": (2, 16),
}


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """The photonic tensor core: microring weight banks on a WDM grid.

    Float fields are pytree leaves (they may be traced arrays, e.g. a channel
    spacing being optimised); the integer fields are static.

    Attributes:
      wavelength_nm: centre wavelength λ0 of the WDM grid (nm).
      quality_factor: loaded Q of each ring (dimensionless); FWHM = λ0/Q.
      channel_spacing_nm: spacing Δ of the uniform WDM grid (nm).
      num_channels: wavelengths per bank, i.e. per free spectral range.
      fsr_nm: free spectral range of the rings (nm); needs N·Δ ≤ FSR.
      responsivity_A_per_W: photodetector responsivity R (A/W).
      laser_power_mW: optical power per channel reaching the detector (mW).
      bandwidth_GHz: detector / receiver noise bandwidth B (GHz).
      load_resistance_ohm: transimpedance load R_L setting thermal noise (Ω).
      temperature_K: receiver temperature (K).
      rin_db_per_hz: laser relative intensity noise (dB/Hz, negative).
      dac_bits: resolution of the input modulator DACs (bits, 2..16).
      adc_bits: resolution of the output ADCs (bits, 2..16).
      thermal_coupling: fraction of a ring heater's tuning that reaches its
        nearest neighbour; it decays geometrically, κ^d at distance d. [0, 1).
      thermo_optic_nm_per_K: resonance shift per kelvin dλ/dT (nm/K);
        0.08 for silicon.
      crosstalk_suppression_db: how far linear compensation suppresses the
        inter-channel crosstalk power that reaches the noise budget (dB);
        0 means uncompensated.
    """

    wavelength_nm: Any = 1550.0
    quality_factor: Any = 1.0e4
    channel_spacing_nm: Any = 0.8
    num_channels: int = 16
    fsr_nm: Any = 20.0
    responsivity_A_per_W: Any = 1.0
    laser_power_mW: Any = 1.0
    bandwidth_GHz: Any = 10.0
    load_resistance_ohm: Any = 50.0
    temperature_K: Any = 300.0
    rin_db_per_hz: Any = -150.0
    dac_bits: int = 8
    adc_bits: int = 8
    thermal_coupling: Any = 0.0
    thermo_optic_nm_per_K: Any = 0.08
    crosstalk_suppression_db: Any = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi, lo_incl, hi_incl) in _FLOAT_RANGES.items():
            values = _concrete(name, getattr(self, name))
            if values is None:
                continue
            above = values >= lo if lo_incl else values > lo
            below = values <= hi if hi_incl else values < hi
            if np.isnan(values).any() or not (above & below).all():
                bounds = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}{']' if hi_incl else ')'}"
                raise ValueError(
                    f"HardwareConfig.{name} = {_show(values)} is out of range: "
                    f"allowed {bounds}"
                )
        for name, (lo, hi) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(
                    f"HardwareConfig.{name} = {value!r} must be an integer in {lo}..{hi}"
                )
            if not lo <= value <= hi:
                raise ValueError(
                    f"HardwareConfig.{name} = {value} is out of range: allowed {lo}..{hi}"
                )
        spacing = _concrete("channel_spacing_nm", self.channel_spacing_nm)
        fsr = _concrete("fsr_nm", self.fsr_nm)
        if spacing is not None and fsr is not None:
            band = self.num_channels * spacing
            if (band > fsr * (1.0 + 1e-9)).any():  # tolerate rounding in N·Δ
                raise ValueError(
                    f"HardwareConfig.num_channels·channel_spacing_nm = "
                    f"{self.num_channels}·{_show(spacing)} = {_show(band)} nm exceeds "
                    f"fsr_nm = {_show(fsr)} nm: all channels must fit one free spectral "
                    f"range (allowed num_channels·channel_spacing_nm ≤ fsr_nm)"
                )

    def replace(self, **changes: Any) -> HardwareConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as plain Python numbers (for msgpack and JSON)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (v if isinstance(v, int) else float(v)) for k, v in fields.items()}


_STATIC_FIELDS = tuple(_INT_RANGES)
_LEAF_FIELDS = tuple(
    f.name for f in dataclasses.fields(HardwareConfig) if f.name not in _STATIC_FIELDS
)


def _flatten(config: HardwareConfig):
    leaves = tuple(getattr(config, n) for n in _LEAF_FIELDS)
    static = tuple(getattr(config, n) for n in _STATIC_FIELDS)
    return leaves, static


def _unflatten(static, leaves) -> HardwareConfig:
    # JAX rebuilds configs with tracers, sentinels or batching axes as leaves:
    # skip validation, which only applies to configs a user builds.
    config = object.__new__(HardwareConfig)
    for name, value in zip(_LEAF_FIELDS, leaves):
        object.__setattr__(config, name, value)
    for name, value in zip(_STATIC_FIELDS, static):
        object.__setattr__(config, name, value)
    return config


jax.tree_util.register_pytree_node(HardwareConfig, _flatten, _unflatten)


def _concrete(name: str, value: Any) -> np.ndarray | None:
    """``value`` as a float array, or None while it is being traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"HardwareConfig.{name} = {value!r} is not a number") from err


def _show(values: np.ndarray) -> str:
    return f"{float(values):g}" if values.size == 1 else np.array2string(values, precision=4)


# ---------------------------------------------------------------------------
# Ring response and WDM crosstalk


def fwhm_nm(config: HardwareConfig) -> Array:
    """Full width at half maximum of a ring resonance, ``λ0/Q`` (nm)."""
    return jnp.asarray(config.wavelength_nm) / config.quality_factor


def lorentzian_drop(detuning_nm: ArrayLike, linewidth_nm: ArrayLike) -> Array:
    """Drop-port power transmission ``1 / (1 + (2δ/FWHM)²)`` of a ring.

    Args:
      detuning_nm: carrier minus resonance wavelength δ (nm), any shape.
      linewidth_nm: resonance FWHM (nm), broadcast against ``detuning_nm``.

    Returns:
      Transmission in [0, 1], shape of the broadcast inputs.
    """
    x = 2.0 * jnp.asarray(detuning_nm) / linewidth_nm
    return 1.0 / (1.0 + x * x)


def channel_wavelengths_nm(config: HardwareConfig, num_channels: int | None = None) -> Array:
    """Carrier wavelengths of the grid, centred on λ0, shape ``(N,)`` (nm)."""
    n = config.num_channels if num_channels is None else num_channels
    index = jnp.arange(n) - (n - 1) / 2.0
    return config.wavelength_nm + index * config.channel_spacing_nm


def crosstalk_matrix(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    num_channels: int | None = None,
) -> Array:
    """WDM crosstalk ``C[j, i] = L((j − i)·Δ − δ_i)``, shape ``(N, N)``.

    Row ``j`` is the carrier, column ``i`` the ring; ``δ_i`` (nm, shape
    ``(N,)``, default 0) shifts ring ``i`` off its grid slot, e.g. by thermal
    drift. With no detuning ``C`` is symmetric with a unit diagonal.
    """
    n = config.num_channels if num_channels is None else num_channels
    index = jnp.arange(n)
    detuning = (index[:, None] - index[None, :]) * jnp.asarray(config.channel_spacing_nm)
    if ring_detuning_nm is not None:
        detuning = detuning - jnp.broadcast_to(jnp.asarray(ring_detuning_nm), (n,))[None, :]
    return lorentzian_drop(detuning, fwhm_nm(config))


def adjacent_crosstalk_db(config: HardwareConfig) -> Array:
    """Crosstalk from the nearest channel, ``10·log10 L(Δ)`` (dB, negative)."""
    return 10.0 * jnp.log10(lorentzian_drop(config.channel_spacing_nm, fwhm_nm(config)))


def thermal_crosstalk_matrix(config: HardwareConfig, num_channels: int | None = None) -> Array:
    """Heater crosstalk ``K[i, k] = κ^|i−k|``, shape ``(N, N)``.

    Ring ``i`` realises ``Σ_k K[i, k]·w_k``: its own weight plus a fraction of
    its neighbours' heater tuning, decaying geometrically with distance.
    """
    n = config.num_channels if num_channels is None else num_channels
    index = jnp.arange(n)
    distance = jnp.abs(index[:, None] - index[None, :])
    kappa = jnp.asarray(config.thermal_coupling, dtype=jnp.result_type(float))
    # κ^0 = 1 on the diagonal, also for κ = 0.
    return jnp.where(distance == 0, 1.0, kappa ** jnp.maximum(distance, 1))


def coupling_matrix(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    num_channels: int | None = None,
) -> Array:
    """Total linear coupling ``M = C·K`` of one bank, shape ``(N, N)``.

    Heater crosstalk ``K`` acts on the programmed ring weights, optical
    crosstalk ``C`` on the carriers they weight, so ``W_eff = W·Mᵀ``.
    """
    optical = crosstalk_matrix(config, ring_detuning_nm, num_channels)
    return optical @ thermal_crosstalk_matrix(config, num_channels)


def thermal_drift_nm(config: HardwareConfig, delta_temperature_K: ArrayLike) -> Array:
    """Resonance shift from a temperature change, ``Δλ = (dλ/dT)·ΔT`` (nm)."""
    return config.thermo_optic_nm_per_K * jnp.asarray(delta_temperature_K)


def _per_tile(kernel: Array, config: HardwareConfig, ring_detuning_nm, left) -> Array:
    """Each tile of ``kernel`` ``(in, out)`` multiplied on the left by
    ``left(detuning, size)`` ``(size, size)`` (as :func:`coupling_matrix`
    takes them after the config).

    The input axis is cut into tiles of N channels; full tiles (``size =
    N``) go through in one batched product, a shorter last tile with its
    own ``size`` and the detuning of the rings it uses (``None`` when
    ``ring_detuning_nm`` is).
    """
    n = config.num_channels
    fan_in, out = kernel.shape
    full = (fan_in // n) * n
    detuning = None if ring_detuning_nm is None else jnp.broadcast_to(jnp.asarray(ring_detuning_nm), (n,))
    parts = []
    if full:
        parts.append(_tile_product(left(detuning, n), kernel[:full].reshape(full // n, n, out)).reshape(full, out))
    if full < fan_in:
        rest = fan_in - full
        parts.append(left(None if detuning is None else detuning[:rest], rest) @ kernel[full:])
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _tile_product(left: Array, blocks: Array) -> Array:
    """``left·blocks[t]`` for every tile ``t``: ``left`` ``(n, n)``, ``blocks``
    ``(tiles, n, out)`` → ``(tiles, n, out)``, as a batched dot (XLA:CPU runs
    it as a batch of small GEMMs, without transposing the kernel)."""
    dtype = jnp.result_type(left, blocks)
    lefts = jnp.broadcast_to(left.astype(dtype), (blocks.shape[0],) + left.shape)
    return jax.lax.dot_general(lefts, blocks.astype(dtype), (((2,), (1,)), ((0,), (0,))))


@jax.custom_vjp
def _peak_of_tile_product(left: Array, blocks: Array) -> Array:
    """``max_{t,i} |(left·blocks[t])[i, o]|`` for each output ``o``: ``(out,)``.

    Its gradient is the gradient of the entry that attains each maximum
    (the first one on ties), computed from that entry alone: ``N`` values
    per output instead of the transposed product over every weight.
    """
    return jnp.max(jnp.abs(_tile_product(left, blocks)), axis=(0, 1))


def _peak_fwd(left: Array, blocks: Array):
    product = _tile_product(left, blocks)
    flat = product.reshape(-1, product.shape[-1])
    magnitude = jnp.abs(flat)
    peak = jnp.max(magnitude, axis=0)
    # The first row attaining each peak as a min-reduction over row indices:
    # one plain reduction, where argmax's (value, index) pair reduction
    # runs element by element on XLA:CPU. A NaN peak matches no row; its
    # index is then clamped to the last row.
    rows = jax.lax.broadcasted_iota(jnp.int32, flat.shape, 0)
    where = jnp.minimum(jnp.min(jnp.where(magnitude == peak, rows, flat.shape[0]), axis=0), flat.shape[0] - 1)
    sign = jnp.sign(jnp.take_along_axis(flat, where[None], axis=0)[0])
    return peak, (left, blocks, where, sign)


def _peak_bwd(residuals, grad: Array):
    left, blocks, where, sign = residuals
    n = left.shape[0]
    tile, row, column = where // n, where % n, jnp.arange(blocks.shape[-1])
    weight = (grad * sign)[:, None]  # (out, 1)
    read = blocks[tile, :, column]  # (out, n): the inputs of each peak's dot product
    grad_left = jnp.zeros_like(left).at[row].add((weight * read).astype(left.dtype))
    # Nonzero only in the tile of each output's peak: a select XLA fuses into
    # the weights' other gradients (a scatter would first write a dense zero).
    tiles = jax.lax.broadcasted_iota(tile.dtype, blocks.shape, 0)
    grad_blocks = jnp.where(tiles == tile, (weight * left[row]).T.astype(blocks.dtype), 0)
    return grad_left, grad_blocks


_peak_of_tile_product.defvjp(_peak_fwd, _peak_bwd)


def effective_weights(
    weight: ArrayLike, config: HardwareConfig, ring_detuning_nm: ArrayLike | None = None
) -> Array:
    """The weights the hardware applies, ``W_eff = W·Mᵀ`` per tile.

    Args:
      weight: programmed weights, shape ``(out, in)``.
      config: the hardware.
      ring_detuning_nm: per-ring offset from the grid (nm), shape ``(N,)``.

    Returns:
      Effective weights, shape ``(out, in)``.
    """
    weight = _check_weight(weight)
    return _per_tile(weight.T, config, ring_detuning_nm, functools.partial(coupling_matrix, config)).T


def _inverse_coupling(config: HardwareConfig, ring_detuning_nm, num_channels: int) -> Array:
    """``M⁻¹`` of one bank of ``num_channels`` rings, shape ``(n, n)``."""
    return jnp.linalg.inv(coupling_matrix(config, ring_detuning_nm, num_channels))


class CrosstalkCompensation(NamedTuple):
    """Result of :func:`compensate_crosstalk`.

    Attributes:
      programmed: weights to program, ``W·(Mᵀ)⁻¹`` clipped to the range,
        shape ``(out, in)``.
      residual: ``W − W_eff(programmed)``, what compensation could not undo,
        shape ``(out, in)``; zero up to rounding where nothing was clipped.
      clipped_fraction: share of programmed weights that hit the range.
    """

    programmed: Array
    residual: Array
    clipped_fraction: Array


def compensate_crosstalk(
    weight: ArrayLike,
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    weight_limit: ArrayLike | None = None,
) -> CrosstalkCompensation:
    """Linear crosstalk compensation ``W_prog = W·(Mᵀ)⁻¹``.

    Args:
      weight: target weights, shape ``(out, in)``.
      config: the hardware.
      ring_detuning_nm: per-ring offset the compensation assumes (nm), ``(N,)``.
      weight_limit: largest programmable ``|w|``, scalar or shape ``(out, 1)``;
        default the largest ``|W|`` of each row (rings span the row's range).

    Returns:
      The programmed weights, the residual error and the clipped share.
    """
    weight = _check_weight(weight)

    # w_prog · mᵀ = w  ⇔  w_progᵀ = m⁻¹ · wᵀ, tile by tile.
    unclipped = _per_tile(weight.T, config, ring_detuning_nm, functools.partial(_inverse_coupling, config)).T
    if weight_limit is None:
        weight_limit = jnp.max(jnp.abs(weight), axis=-1, keepdims=True)
    programmed = jnp.clip(unclipped, -weight_limit, weight_limit)
    residual = weight - effective_weights(programmed, config, ring_detuning_nm)
    clipped = jnp.mean((programmed != unclipped).astype(weight.dtype))
    return CrosstalkCompensation(programmed, residual, clipped)


# ---------------------------------------------------------------------------
# Detector noise, SNR and usable bits


class NoiseBudget(NamedTuple):
    """Current-noise variances at one detector (A²) and the signal current (A)."""

    signal_A: Array
    shot_A2: Array
    thermal_A2: Array
    rin_A2: Array
    crosstalk_A2: Array

    @property
    def total_A2(self) -> Array:
        return self.shot_A2 + self.thermal_A2 + self.rin_A2 + self.crosstalk_A2


def photocurrent_A(config: HardwareConfig) -> Array:
    """Full-scale photocurrent of one channel, ``I = R·P`` (A)."""
    return config.responsivity_A_per_W * jnp.asarray(config.laser_power_mW) * 1e-3


def noise_budget(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    include_crosstalk: bool = True,
) -> NoiseBudget:
    """Noise variances at a detector for one channel at full scale.

    * shot ``2·q·I·B``;
    * thermal (Johnson) ``4·k·T·B / R_L``;
    * laser RIN ``10^(RIN/10)·I²·B``;
    * residual crosstalk ``I²·10^(−S/10)·max_i Σ_{j≠i} C[j, i]²``: the leaks
      of the other carriers into the worst ring, summed as independent
      signals, after compensation suppresses their power by ``S`` dB. It is
      zero with ``include_crosstalk=False``, for simulations that apply the
      crosstalk explicitly through :func:`effective_weights`.
    """
    current = photocurrent_A(config)
    bandwidth_Hz = jnp.asarray(config.bandwidth_GHz) * 1e9
    shot = 2.0 * ELEMENTARY_CHARGE_C * current * bandwidth_Hz
    thermal = 4.0 * BOLTZMANN_J_PER_K * config.temperature_K * bandwidth_Hz
    thermal = thermal / config.load_resistance_ohm
    rin = 10.0 ** (jnp.asarray(config.rin_db_per_hz) / 10.0) * current**2 * bandwidth_Hz
    if include_crosstalk:
        c = crosstalk_matrix(config, ring_detuning_nm)
        leak = c * (1.0 - jnp.eye(config.num_channels, dtype=c.dtype))
        worst_leak = jnp.max(jnp.sum(leak**2, axis=0))
        suppression = 10.0 ** (-jnp.asarray(config.crosstalk_suppression_db) / 10.0)
        crosstalk = current**2 * suppression * worst_leak
    else:
        crosstalk = jnp.zeros_like(current)
    return NoiseBudget(current, shot, thermal, rin, crosstalk)


def snr(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    include_crosstalk: bool = True,
) -> Array:
    """Signal-to-noise power ratio ``I² / Σσ²`` of one channel (linear)."""
    budget = noise_budget(config, ring_detuning_nm, include_crosstalk)
    return budget.signal_A**2 / budget.total_A2


def snr_db(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    include_crosstalk: bool = True,
) -> Array:
    """Signal-to-noise ratio of one channel at full scale (dB)."""
    return 10.0 * jnp.log10(snr(config, ring_detuning_nm, include_crosstalk))


def enob(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    include_crosstalk: bool = True,
) -> Array:
    """Effective number of bits ``(SNR_dB − 1.76) / 6.02`` (continuous)."""
    return (snr_db(config, ring_detuning_nm, include_crosstalk) - 1.76) / 6.02


def effective_bits(
    config: HardwareConfig,
    ring_detuning_nm: ArrayLike | None = None,
    include_crosstalk: bool = True,
) -> Array:
    """Usable bits: ``⌊ENOB⌋`` within ``1..min(dac_bits, adc_bits)`` (int32).

    Not differentiable (it is a floor); use :func:`enob` for gradients.
    """
    cap = min(config.dac_bits, config.adc_bits)
    bits = jnp.clip(jnp.floor(enob(config, ring_detuning_nm, include_crosstalk)), 1, cap)
    return bits.astype(jnp.int32)


# ---------------------------------------------------------------------------
# The photonic product


def _check_weight(weight: ArrayLike, name: str = "weight", axes: str = "(out, in)") -> Array:
    weight = jnp.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"{name} must have shape {axes}, got shape {weight.shape}")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise ValueError(f"{name} must be a real floating array, got dtype {weight.dtype}")
    return weight


class ProgrammedBank(NamedTuple):
    """The weights of one product as the hardware holds them.

    Attributes:
      effective: the weights the product applies, ``W_effᵀ``, ``(in, out)``.
      full_scale: the largest programmed ``|w|`` of each output, ``(out,)``,
        the full scale the detector noise refers to.
    """

    effective: Array
    full_scale: Array


def program_bank(
    kernel: ArrayLike,
    config: HardwareConfig,
    *,
    ring_detuning_nm: ArrayLike | None = None,
    compensate: bool = False,
) -> ProgrammedBank:
    """Programs ``W`` into the ring banks, given as its transpose ``kernel``
    ``(in, out)`` (the layout of ``nnx.Linear``'s kernel: the products read
    it without a transpose).

    Without compensation the rings hold ``W`` and apply ``W·M_dᵀ`` per tile
    (``M_d`` the coupling with the rings' detuning). With it they hold
    ``W·(M₀ᵀ)⁻¹`` (``M₀`` the coupling it assumes, without detuning),
    unclipped, and apply ``W·(M₀ᵀ)⁻¹·M_dᵀ``: exactly ``W`` while the rings
    stay on the grid (``ring_detuning_nm=None``). Each tile's matrix is one
    small ``(N, N)`` product, so the weights pass through one batched
    product per tile size.
    """
    kernel = _check_weight(kernel, "kernel", "(in, out)")
    if not compensate:
        effective = _per_tile(kernel, config, ring_detuning_nm, functools.partial(coupling_matrix, config))
        return ProgrammedBank(effective, jnp.max(jnp.abs(kernel), axis=0))
    if ring_detuning_nm is None:
        effective = kernel
    else:
        transfer = lambda detuning, size: coupling_matrix(config, detuning, size) @ _inverse_coupling(config, None, size)
        effective = _per_tile(kernel, config, ring_detuning_nm, transfer)
    return ProgrammedBank(effective, _programmed_peak(kernel, config))


def _programmed_peak(kernel: Array, config: HardwareConfig) -> Array:
    """The largest ``|W·(M₀ᵀ)⁻¹|`` of each output over the tiles of ``kernel``
    ``(in, out)`` (the tiling of :func:`_per_tile`): ``(out,)``."""
    n = config.num_channels
    fan_in, out = kernel.shape
    full = (fan_in // n) * n
    peaks = []
    if full:
        peaks.append(_peak_of_tile_product(_inverse_coupling(config, None, n), kernel[:full].reshape(full // n, n, out)))
    if full < fan_in:
        rest = fan_in - full
        peaks.append(_peak_of_tile_product(_inverse_coupling(config, None, rest), kernel[full:][None]))
    return functools.reduce(jnp.maximum, peaks)


def detector_noise_std(
    config: HardwareConfig, fan_in: int, input_full_scale: ArrayLike, weight_full_scale: ArrayLike
) -> Array:
    """Standard deviation of the detector noise of each output,
    ``σ = √(tiles/SNR)·x_fs·w_fs``, in the units of the product.

    ``SNR`` counts shot, thermal and RIN noise (crosstalk is applied to the
    weights explicitly), ``tiles = ⌈fan_in/N⌉`` the detector reads one output
    sums, ``x_fs`` the input full scale and ``w_fs`` the programmed full scale
    of the output's row (shape ``(out,)``, or a scalar).
    """
    tiles = -(-fan_in // config.num_channels)
    detector_snr = snr(config, include_crosstalk=False)
    return jnp.sqrt(tiles / detector_snr) * input_full_scale * weight_full_scale


def photonic_matmul(
    x: ArrayLike,
    weight: ArrayLike,
    config: HardwareConfig | None = None,
    key: Array | None = None,
    *,
    ring_detuning_nm: ArrayLike | None = None,
    compensate: bool = False,
    input_full_scale: ArrayLike | None = None,
) -> Array:
    """``y = x·W_effᵀ + n`` on the simulated photonic core.

    Modes: with ``config=None`` the hardware is ideal and the result is
    exactly ``x·Wᵀ``; with a config and no key it is deterministic (coupling
    only, :func:`program_bank`); with a key, detector noise ``n ~ N(0, σ²)``
    is added with :func:`detector_noise_std` per output, its draws from
    :func:`lumijax.kernels.standard_normal`. The noise is reparameterised
    (``σ·ε``), so gradients flow through it.

    Args:
      x: inputs, shape ``(..., in)``, real floating.
      weight: weights, shape ``(out, in)``, real floating.
      config: the hardware, or None for ideal.
      key: PRNG key for the detector noise, or None for none.
      ring_detuning_nm: per-ring offset from the grid (nm), shape ``(N,)``.
      compensate: program ``W·(Mᵀ)⁻¹`` (assuming no detuning) instead of
        ``W``. The noise refers to the programmed full scale: compensation
        costs SNR by the headroom it needs.
      input_full_scale: DAC full scale of ``x``; default ``max|x|``.

    Returns:
      Outputs, shape ``(..., out)``.
    """
    x = jnp.asarray(x)
    weight = _check_weight(weight)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x has shape {x.shape} but weight has shape {weight.shape}: "
            f"the last axis of x must equal weight.shape[1] = {weight.shape[1]}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a real floating array, got dtype {x.dtype}")
    if config is None:
        return jnp.matmul(x, weight.T)
    bank = program_bank(weight.T, config, ring_detuning_nm=ring_detuning_nm, compensate=compensate)
    y = jnp.matmul(x, bank.effective)
    if key is None:
        return y
    if input_full_scale is None:
        input_full_scale = jnp.max(jnp.abs(x))
    sigma = detector_noise_std(config, weight.shape[1], input_full_scale, bank.full_scale)
    return y + sigma * kernels.standard_normal(key, y.shape, y.dtype)
