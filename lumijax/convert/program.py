"""Any torch module → a photonic NNX program, through ``torch.export``.

:func:`from_torch` captures the module with ``torch.export`` and turns the
ATen graph into a :class:`ProgramSpec`: plain data (steps in topological
order with their arguments bound by the op schemas, the photonic layers and
the parameters). :class:`TorchProgram` is the NNX module that interprets a
spec with jnp, running every matrix product on a photonic layer:

* ``linear``, ``addmm``, ``mm``, ``matmul`` whose weight operand is a
  parameter (or its transpose) → :class:`~lumijax.layers.OpticalLinear`;
* ``conv2d`` and ``conv1d`` (one row) → :class:`~lumijax.layers.OpticalConv`,
  ``conv_transpose2d`` and ``conv_transpose1d`` →
  :class:`~lumijax.layers.OpticalConvTranspose` (NCHW kept outside);
* ``lstm`` and ``gru`` → :class:`~lumijax.recurrent.OpticalRNN` (gate
  products on the core);
* products of two activations (``bmm``, ``matmul``, ``mm``) and
  ``scaled_dot_product_attention`` → a :class:`~lumijax.layers.PhotonicCore`
  of their own.

Layers are named after the torch weight they hold (``transformer.h.0.attn.
c_attn``); parameters that are not products' weights keep their torch path.
A spec is torch-free, so a converted program is saved and rebuilt without
torch (:mod:`lumijax.convert.serialize`). Like ``torch.export`` with static
shapes, the program is specialised to the example inputs' shapes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lumijax import layers
from lumijax.convert import aten
from lumijax.convert.checkpoint import Slot
from lumijax.convert.factory import LayerFactory

Array = jax.Array
WEIGHT_PRODUCTS = {"aten.linear.default", "aten.addmm.default", "aten.mm.default", "aten.matmul.default"}
ACTIVATION_PRODUCTS = {"aten.mm.default", "aten.matmul.default", "aten.bmm.default"}
ATTENTION = "aten.scaled_dot_product_attention.default"
CONVS = {"aten.conv1d.default": (1, False), "aten.conv2d.default": (2, False),
         "aten.conv_transpose1d.default": (1, True), "aten.conv_transpose2d.input": (2, True)}
"""Convolutions: ``(spatial axes, transposed)`` (a 1-D one runs as a 2-D one
over a single row)."""
RECURRENT = {"aten.lstm.input": "lstm", "aten.gru.input": "gru"}
"""Recurrent layers by their cell (:mod:`lumijax.recurrent`)."""
TRANSPOSES = {"aten.t.default", "aten.transpose.int", "aten.permute.default"}


class ConversionError(ValueError):
    """A torch graph the converter cannot map."""


class Buffer(nnx.Variable):
    """A torch buffer or constant tensor (not trained)."""


class Namespace(nnx.Module):
    """A node of the module tree that only holds children."""


@dataclasses.dataclass(frozen=True, eq=False)
class ProgramSpec:
    """An exported graph as plain data (msgpack and JSON friendly). Compared
    and hashed by identity, so that it can sit in an NNX graph definition.

    Attributes:
      inputs: ``[name, shape, dtype]`` of the tensor inputs, in call order.
      steps: ``[name, op, arguments]``; a reference to a value is
        ``{"ref": name}``, a dtype ``{"dtype": name}``.
      outputs: the output structure, with references.
      modules: photonic layers and cores by dotted path, each
        ``{"kind": "linear" | "conv" | "conv_transpose" | "recurrent" |
        "core", ...}``.
      tensors: parameters and buffers by torch name: ``{"path", "attr",
        "layout", "kind": "param" | "buffer" | "layer", "shape", "dtype"}``.
      placeholders: graph placeholder → torch name.
      units: step name → the module path that runs it on the core.
      notes: what the capture changed to export the module (inputs it
        set), in words.
    """

    inputs: list
    steps: list
    outputs: Any
    modules: dict
    tensors: dict
    placeholders: dict
    units: dict
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProgramSpec:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and "ref" in value


def substitute(value: Any, lookup: Callable[[str], Any]) -> Any:
    """A step argument (or the outputs) with each reference ``{"ref":
    name}`` replaced by ``lookup(name)`` and each dtype by its name."""
    if _is_ref(value):
        return lookup(value["ref"])
    if isinstance(value, dict) and "dtype" in value:
        return value["dtype"]
    if isinstance(value, (list, tuple)):
        return [substitute(v, lookup) for v in value]
    return value


def _attach(root: nnx.Module, path: str, name: str, value: Any) -> None:
    node = root
    for part in path.split(".") if path else []:
        child = getattr(node, part, None)
        if child is None:
            child = Namespace()
            setattr(node, part, child)
        if not isinstance(child, Namespace):
            raise ValueError(f"{path!r} passes through a layer")
        node = child
    setattr(node, name, value)


def _lookup(root: nnx.Module, path: str) -> Any:
    node = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


class TorchProgram(nnx.Module):
    """An exported torch graph run with jnp, its products on the core.

    ``program(*inputs)`` takes the example inputs' tensors (same shapes) and
    returns what the torch module returned (one array or a tuple).
    """

    def __init__(self, spec: ProgramSpec, factory: LayerFactory | None = None, *, rngs: nnx.Rngs):
        self.factory = factory = factory or LayerFactory()
        self.spec = spec
        for path, module in spec.modules.items():
            _attach(self, *self._split(path), self._make(module, factory, rngs))
        for tensor in spec.tensors.values():
            if tensor["kind"] != "layer":
                cls = nnx.Param if tensor["kind"] == "param" else Buffer
                _attach(self, tensor["path"], tensor["attr"], cls(jnp.zeros(tensor["shape"], aten.dtype_of(tensor["dtype"]))))

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        head, _, name = path.rpartition(".")
        return head, name

    @staticmethod
    def _make(module: dict, factory: LayerFactory, rngs: nnx.Rngs) -> nnx.Module:
        if module["kind"] == "linear":
            return factory.linear(module["in"], module["out"], use_bias=module["bias"], rngs=rngs)
        if module["kind"] == "conv":
            return factory.conv(module["in"], module["out"], module["kernel"], module["stride"], module["padding"],
                                use_bias=module["bias"], groups=module.get("groups", 1),
                                dilation=module.get("dilation", 1), rngs=rngs)
        if module["kind"] == "recurrent":
            return factory.recurrent(module["cell"], module["in"], module["hidden"], module["layers"],
                                     bidirectional=module["bidirectional"], use_bias=module["bias"], rngs=rngs)
        if module["kind"] == "conv_transpose":
            return factory.conv_transpose(module["in"], module["out"], module["kernel"], module["stride"],
                                          module["padding"], module["output_padding"], module["dilation"],
                                          use_bias=module["bias"], groups=module["groups"], rngs=rngs)
        return factory.core(rngs)

    @property
    def arch(self) -> str:
        return "torch.export"

    def recipe_config(self) -> dict:
        return self.spec.to_dict()

    def example_inputs(self) -> tuple[Array, ...]:
        """Zeros of the exported inputs' shapes and dtypes."""
        return tuple(jnp.zeros(shape, aten.dtype_of(dtype)) for _, shape, dtype in self.spec.inputs)

    def torch_slots(self) -> dict[str, Slot]:
        return {name: self._slot(name) for name in self.spec.tensors}

    def torch_aliases(self) -> dict[str, str]:
        return {}

    def torch_ignored(self) -> re.Pattern:
        return re.compile(r".*num_batches_tracked")

    def _slot(self, torch_name: str) -> Slot:
        tensor = self.spec.tensors[torch_name]
        owner = _lookup(self, tensor["path"]) if tensor["path"] else self
        return Slot(_lookup(owner, tensor["attr"]), tensor["layout"])

    def __call__(self, *inputs: Array, observe: bool = False) -> Any:
        if len(inputs) != len(self.spec.inputs):
            raise TypeError(f"the program takes {len(self.spec.inputs)} tensor inputs, got {len(inputs)}")
        env: dict[str, Any] = {}
        for (name, shape, dtype), value in zip(self.spec.inputs, inputs):
            value = jnp.asarray(value)
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"input {name!r}: shape {tuple(value.shape)}, but the program was exported for {tuple(shape)}")
            env[name] = value.astype(aten.dtype_of(dtype))
        for name, op, arguments in self.spec.steps:
            args = {k: self._resolve(v, env) for k, v in arguments.items()}
            if name in self.spec.units:
                env[name] = self._photonic(op, _lookup(self, self.spec.units[name]), args, observe)
            else:
                functional = aten.functional(op)
                env[name] = aten.OPS[functional](**args)
                if functional != op:  # in-place: later readers of the operand see the result
                    first = next(iter(arguments.values()))
                    env[first["ref"]] = env[name]
        return self._resolve(self.spec.outputs, env)

    def _resolve(self, value: Any, env: dict) -> Any:
        def lookup(name: str) -> Any:
            if name not in env:
                slot = self._slot(self.spec.placeholders[name])
                env[name] = slot.to_torch(slot.variable[...])
            return env[name]

        return substitute(value, lookup)

    @staticmethod
    def _photonic(op: str, unit: nnx.Module, args: dict, observe: bool) -> Array:
        if op in CONVS:
            x = args["input"]
            image = jnp.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else jnp.transpose(x, (0, 2, 1))[:, None]
            y = unit(image, observe=observe)
            return jnp.transpose(y, (0, 3, 1, 2)) if x.ndim == 4 else jnp.transpose(y[:, 0], (0, 2, 1))
        if op in RECURRENT:
            x = jnp.swapaxes(args["input"], 0, 1) if args["batch_first"] else args["input"]
            hx = args["hx"]  # LSTM: [h_0, c_0]; GRU: h_0
            y, state = unit(x, tuple(hx) if isinstance(hx, (list, tuple)) else (hx,), observe=observe)
            return (jnp.swapaxes(y, 0, 1) if args["batch_first"] else y, *state)
        if op == ATTENTION:
            q, k, v = args["query"], args["key"], args["value"]
            scale = args["scale"] if args["scale"] is not None else q.shape[-1] ** -0.5
            return layers.attention(unit, q, k, v, scale=scale, causal=args["is_causal"], mask=args["attn_mask"])
        if isinstance(unit, layers.OpticalLinear):
            x = args["input"] if op == "aten.linear.default" else args["mat1"] if op == "aten.addmm.default" else args["self"]
            y = unit(x, observe=observe)
            if op == "aten.addmm.default" and unit.bias is None:
                y = args["alpha"] * y + args["beta"] * args["self"]
            return y
        a, b = args["self"], args["mat2"] if "mat2" in args else args["other"]
        if b.ndim == 1:
            return unit.pairwise(a, jnp.broadcast_to(b[:, None], a.shape[:-2] + (b.shape[0], 1)))[..., 0]
        a = a[None, :] if a.ndim == 1 else a
        lead = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = jnp.broadcast_to(a, lead + a.shape[-2:])
        b = jnp.broadcast_to(b, lead + b.shape[-2:])
        y = unit.pairwise(a, b)
        return y[..., 0, :] if args["self"].ndim == 1 else y

