"""WDM planning: which input rides on which wavelength, and how close.

For every photonic op (one matrix product, one tensor flow) the planner

1. tiles the input dimension into groups of ``num_channels`` inputs, one
   group per free spectral range (``N·Δ ≤ FSR``);
2. assigns the inputs of each tile to wavelength slots so that high-power
   signals are not neighbours, minimising the crosstalk power
   ``Σ_{i≠j} P_i·P_j·C(slot_i − slot_j)``: a greedy spread (strongest
   inputs to the slots farthest from the strong ones already placed) then
   pairwise-swap local search until no swap helps, ``O(passes·N³)`` per
   tile; the result is never worse than the sequential assignment, which
   is kept when it is better;
3. compresses the channel spacing to the smallest value whose predicted SNR
   (detector noise plus residual crosstalk after linear compensation, from
   :func:`lumijax.hardware.snr_db`) still supports the op's bits, by
   bisection (the SNR grows monotonically with spacing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from flax import nnx
from rich.table import Table

from lumijax import hardware as hw


@dataclasses.dataclass(frozen=True)
class PhotonicOp:
    """One matrix product as the planner sees it.

    Attributes:
      name: where the op sits in the model.
      channel_power: signal power per input (arbitrary units), ``(fan_in,)``.
      bits: the bits the quantizer needs for this op.
    """

    name: str
    channel_power: np.ndarray
    bits: int

    @property
    def fan_in(self) -> int:
        return int(np.asarray(self.channel_power).shape[0])


def _planned_layers(model: nnx.Module) -> dict[str, nnx.Module]:
    """The layers of ``model`` whose products the planner places, by path."""
    from lumijax import layers

    return {
        ".".join(str(p) for p in path): node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, layers.QuantizedWeights)
    }


def photonic_ops(model: nnx.Module) -> list[PhotonicOp]:
    """The ops of a photonic NNX model, with per-input power from the weights.

    The power of input ``i`` is the energy ``Σ_o w_oi²`` it sends through the
    bank, normalised to the strongest input; the bits are the layer's weight
    bits.
    """
    ops = []
    for name, layer in _planned_layers(model).items():
        energy = np.sum(np.asarray(layer.weight_matrix(), np.float64) ** 2, axis=0)
        ops.append(PhotonicOp(name, energy / max(float(energy.max()), 1e-30), layer.weight_bits))
    return ops


@dataclasses.dataclass(frozen=True)
class OpAllocation:
    """The plan of one op.

    Attributes:
      name: the op.
      spacing_nm: compressed channel spacing (nm).
      tiles: input indices of each tile, in slot order (slot ``s`` of tile
        ``t`` carries input ``tiles[t][s]``).
      wavelengths_nm: carrier of each slot, ``(num_channels,)`` (nm).
      adjacent_crosstalk_db: crosstalk from the nearest channel at that spacing.
      snr_db: predicted SNR at that spacing.
      crosstalk_cost: ``Σ P_i·P_j·C_ij`` of the chosen assignment.
      sequential_cost: the same for inputs in their natural order.
    """

    name: str
    spacing_nm: float
    tiles: list[list[int]]
    wavelengths_nm: list[float]
    adjacent_crosstalk_db: float
    snr_db: float
    crosstalk_cost: float
    sequential_cost: float

    @property
    def permutation(self) -> list[int]:
        """Input index per slot, tiles concatenated."""
        return [i for tile in self.tiles for i in tile]


@dataclasses.dataclass(frozen=True)
class WDMMap:
    """The WDM plan of a model: one :class:`OpAllocation` per op."""

    hardware: hw.HardwareConfig
    ops: list[OpAllocation]

    def to_dict(self) -> dict:
        """Plain types only (for msgpack and JSON)."""
        return {"hardware": self.hardware.to_dict(), "ops": [dataclasses.asdict(op) for op in self.ops]}

    @classmethod
    def from_dict(cls, data: dict) -> WDMMap:
        return cls(hw.HardwareConfig(**data["hardware"]), [OpAllocation(**op) for op in data["ops"]])

    def apply(self, model: nnx.Module) -> None:
        """Puts the plan on the layers of ``model``: each layer's inputs go to
        their planned slots and its core takes the planned spacing (a core
        shared by several layers takes the last of their spacings)."""
        found = _planned_layers(model)
        for op in self.ops:
            if op.name not in found:
                raise KeyError(f"the WDM map plans op {op.name!r}, which the model does not have")
            layer = found[op.name]
            layer.set_slot_order(op.permutation)
            layer.core.channel_spacing_nm[...] = np.float32(op.spacing_nm)

    def table(self) -> Table:
        """A rich table of the plan."""
        table = Table(title="WDM plan")
        for column in ("op", "inputs", "tiles", "spacing (nm)", "adj. XT (dB)", "SNR (dB)", "XT cost vs sequential"):
            table.add_column(column, justify="left" if column == "op" else "right")
        for op in self.ops:
            ratio = op.crosstalk_cost / op.sequential_cost if op.sequential_cost > 0 else 1.0
            table.add_row(op.name, str(len(op.permutation)), str(len(op.tiles)), f"{op.spacing_nm:.3f}",
                          f"{op.adjacent_crosstalk_db:.1f}", f"{op.snr_db:.1f}", f"{100 * ratio:.1f} %")
        return table

    def plot_spectra(self, name: str, path: str | Path, points: int = 3000) -> Path:
        """Ring drop spectra of op ``name`` on its planned grid, to a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        op = next((o for o in self.ops if o.name == name), None)
        if op is None:
            raise KeyError(f"no op named {name!r} in the WDM map")
        config = self.hardware.replace(channel_spacing_nm=op.spacing_nm)
        centres = np.asarray(op.wavelengths_nm)
        grid = np.linspace(centres[0] - 2 * op.spacing_nm, centres[-1] + 2 * op.spacing_nm, points)
        response = np.asarray(hw.lorentzian_drop(grid[None, :] - centres[:, None], hw.fwhm_nm(config)))
        fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
        for curve in response:
            ax.plot(grid, 10 * np.log10(curve), lw=0.9)
        ax.set_ylim(-40, 1)
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("drop-port transmission (dB)")
        ax.set_title(f"{name}: Δ = {op.spacing_nm:.3f} nm, adjacent crosstalk {op.adjacent_crosstalk_db:.1f} dB, SNR {op.snr_db:.1f} dB")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def crosstalk_cost(power: np.ndarray, slots: Sequence[int], coupling: np.ndarray) -> float:
    """``Σ_{i≠j} P_i·P_j·C[slot_i, slot_j]`` for inputs placed in ``slots``."""
    p = np.asarray(power, np.float64)
    c = coupling[np.ix_(slots, slots)]
    # Elementwise products and numpy's pairwise sum rather than a BLAS
    # product, whose summation order depends on the CPU's kernel: the same
    # bits on every machine, so written files are reproducible.
    return float(np.sum(np.outer(p, p) * (c - np.diag(np.diag(c)))))


def assign_slots(power: np.ndarray, coupling: np.ndarray, passes: int = 20) -> list[int]:
    """Slot of each input that keeps strong inputs apart (see module doc).

    Returns:
      ``slots`` with ``slots[i]`` the slot of input ``i``; never costlier
      than the sequential ``slots[i] = i``.
    """
    n = len(power)
    off = coupling - np.diag(np.diag(coupling))
    # Greedy spread: strongest first, each to the free slot with the least
    # coupling to the power already placed.
    slots = np.full(n, -1)
    placed = np.zeros(coupling.shape[0])
    for i in np.argsort(-np.asarray(power), kind="stable"):
        free = [s for s in range(n) if s not in set(slots[slots >= 0].tolist())]
        best = min(free, key=lambda s: off[s, :n] @ placed[:n])
        slots[i] = best
        placed[best] = power[i]
    # Local search: swap two inputs' slots while that lowers the cost.
    cost = crosstalk_cost(power, slots, coupling)
    for _ in range(passes):
        improved = False
        for a in range(n):
            for b in range(a + 1, n):
                slots[a], slots[b] = slots[b], slots[a]
                trial = crosstalk_cost(power, slots, coupling)
                if trial < cost - 1e-15 * max(cost, 1.0):
                    cost, improved = trial, True
                else:
                    slots[a], slots[b] = slots[b], slots[a]
        if not improved:
            break
    sequential = list(range(n))
    return slots.tolist() if cost <= crosstalk_cost(power, sequential, coupling) else sequential


class WDMPlanner:
    """Plans wavelengths and spacing for every op of a model.

    Args:
      hardware: the hardware (its ``num_channels`` is the tile size, its
        ``fsr_nm`` the band, its ``crosstalk_suppression_db`` the residual
        crosstalk after compensation).
      min_spacing_nm: the smallest spacing the fabrication allows (nm).
      tolerance_nm: bisection tolerance on the spacing (nm).
    """

    def __init__(self, hardware: hw.HardwareConfig, min_spacing_nm: float = 0.05, tolerance_nm: float = 1e-3):
        if not 0 < min_spacing_nm or not 0 < tolerance_nm:
            raise ValueError("min_spacing_nm and tolerance_nm must be > 0")
        self.hardware = hardware
        self.min_spacing_nm = float(min_spacing_nm)
        self.tolerance_nm = float(tolerance_nm)

    def required_snr_db(self, bits: int) -> float:
        """SNR that supports ``bits``: ``6.02·bits + 1.76`` dB."""
        return 6.02 * bits + 1.76

    def _snr_db(self, spacing_nm: float) -> float:
        return float(hw.snr_db(self.hardware.replace(channel_spacing_nm=spacing_nm)))

    def compress_spacing(self, name: str, bits: int) -> float:
        """Smallest spacing (within the tolerance) whose SNR supports ``bits``."""
        n = self.hardware.num_channels
        widest = float(self.hardware.fsr_nm) / n
        if self.min_spacing_nm > widest:
            raise ValueError(
                f"op {name!r}: {n} channels at the minimum spacing {self.min_spacing_nm} nm need "
                f"{n * self.min_spacing_nm:.3f} nm, more than the FSR of {float(self.hardware.fsr_nm)} nm"
            )
        need = self.required_snr_db(bits)
        if self._snr_db(widest) < need:
            raise ValueError(
                f"op {name!r}: {bits} bits need an SNR of {need:.1f} dB but the hardware reaches "
                f"{self._snr_db(widest):.1f} dB at the widest spacing {widest:.3f} nm (FSR/{n})"
            )
        lo, hi = self.min_spacing_nm, widest
        if self._snr_db(lo) >= need:
            return lo
        while hi - lo > self.tolerance_nm:
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if self._snr_db(mid) >= need else (mid, hi)
        return hi

    def optimize_allocation(self, model_graph: Iterable[PhotonicOp] | object) -> WDMMap:
        """The WDM map of ``model_graph``: a photonic NNX model, an object
        with a ``photonic_ops()`` method, or :class:`PhotonicOp`s."""
        if isinstance(model_graph, nnx.Module):
            ops = photonic_ops(model_graph)
        elif hasattr(model_graph, "photonic_ops"):
            ops = model_graph.photonic_ops()
        else:
            ops = model_graph
        n = self.hardware.num_channels
        plans = []
        for op in ops:
            power = np.asarray(op.channel_power, np.float64)
            if power.ndim != 1 or power.size == 0 or not np.all(np.isfinite(power)) or np.any(power < 0):
                raise ValueError(f"op {op.name!r}: channel_power must be a non-empty vector of finite powers ≥ 0")
            spacing = self.compress_spacing(op.name, op.bits)
            config = self.hardware.replace(channel_spacing_nm=spacing)
            coupling = np.asarray(hw.crosstalk_matrix(config), np.float64)
            tiles, cost, sequential = [], 0.0, 0.0
            for start in range(0, power.size, n):
                tile_power = power[start : start + n]
                slots = assign_slots(tile_power, coupling)
                order = [0] * len(slots)
                for i, s in enumerate(slots):
                    order[s] = start + i
                tiles.append(order)
                cost += crosstalk_cost(tile_power, slots, coupling)
                sequential += crosstalk_cost(tile_power, list(range(len(slots))), coupling)
            plans.append(OpAllocation(
                name=op.name, spacing_nm=spacing, tiles=tiles,
                wavelengths_nm=[float(v) for v in np.asarray(hw.channel_wavelengths_nm(config), np.float64)],
                adjacent_crosstalk_db=float(hw.adjacent_crosstalk_db(config)),
                snr_db=float(hw.snr_db(config)), crosstalk_cost=cost, sequential_cost=sequential,
            ))
        return WDMMap(self.hardware, plans)
