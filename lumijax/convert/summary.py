"""What a conversion produced: photonic layers, weights and the share of
the arithmetic that runs on the photonic core."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from rich.table import Table

from lumijax import layers
from lumijax.convert.program import TorchProgram

PRODUCTS = ("dot_general", "conv_general_dilated")
HARDWARE_PARAMS = ("log_weight_scale", "channel_spacing_nm")


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """Attributes:
      weighted_layers: layers holding a weight bank (linear, conv, tied head).
      activation_cores: cores multiplying two activations (attention, bmm).
      parameters: model weights (not the hardware knobs ``log_weight_scale``
        and ``channel_spacing_nm``).
      photonic_flops: FLOPs of the matrix products of one forward pass.
      total_flops: all FLOPs of it (elementwise ops one per output element).
      notes: what the capture changed to export the model.
    """

    weighted_layers: int
    activation_cores: int
    parameters: int
    photonic_flops: int
    total_flops: int
    notes: tuple[str, ...] = ()

    @property
    def photonic_share(self) -> float:
        return self.photonic_flops / max(self.total_flops, 1)

    def table(self, title: str = "conversion") -> Table:
        table = Table(title=title)
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("layers with weight banks", str(self.weighted_layers))
        table.add_row("activation-product cores", str(self.activation_cores))
        table.add_row("parameters", f"{self.parameters:,}")
        table.add_row("FLOPs per forward pass", f"{self.total_flops:,}")
        table.add_row("photonic share of FLOPs", f"{100 * self.photonic_share:.2f} %")
        for note in self.notes:
            table.add_row("note", note)
        return table


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _flops(jaxpr) -> tuple[int, int]:
    """(products, total) FLOPs of a jaxpr."""
    products = total = 0
    for eqn in jaxpr.eqns:
        inner = list(_sub_jaxprs(eqn.params))
        if inner:
            for sub in inner:
                p, t = _flops(sub)
                products, total = products + p, total + t
            continue
        out = sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops = 2 * out * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            flops = 2 * out * math.prod(rhs[d] for d in spec[1:])
        else:
            total += out
            continue
        products, total = products + flops, total + flops
    return products, total


def summarize(model: nnx.Module, *inputs: Any) -> ConversionSummary:
    """Counts ``model``'s layers and weights, and the FLOPs of one ideal
    forward pass on ``inputs`` (default: the model's ``example_inputs()``)."""
    inputs = inputs or model.example_inputs()
    ideal = layers.set_mode(nnx.clone(model), "ideal")
    jaxpr = jax.make_jaxpr(lambda *xs: ideal(*xs))(*inputs).jaxpr
    products, total = _flops(jaxpr)
    nodes = [node for _, node in nnx.iter_graph(model)]
    weighted = [n for n in nodes if isinstance(n, layers.QuantizedWeights)]
    owned_cores = {id(n.core) for n in weighted}
    activation_cores = [n for n in nodes if isinstance(n, layers.PhotonicCore) and id(n) not in owned_cores]
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    count = sum(int(np.size(v.get_value())) for path, v in params if str(path[-1]) not in HARDWARE_PARAMS)
    notes = tuple(model.spec.notes) if isinstance(model, TorchProgram) else ()
    return ConversionSummary(len(weighted), len(activation_cores), count, products, total, notes)
