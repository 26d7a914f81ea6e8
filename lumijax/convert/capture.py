"""``torch.export`` capture: a torch module → a :class:`ProgramSpec` and its
weights. The only part of the generic path that needs torch."""

from __future__ import annotations

import dataclasses
import inspect
import operator
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from lumijax import hardware as hw
from lumijax import layers
from lumijax.convert import aten
from lumijax.convert.checkpoint import load_state_dict, state_dict_arrays
from lumijax.convert.factory import LayerFactory
from lumijax.convert.program import (
    ACTIVATION_PRODUCTS, ATTENTION, CONVS, RECURRENT, TRANSPOSES, WEIGHT_PRODUCTS, ConversionError, Namespace, ProgramSpec, TorchProgram,
    substitute,
)

_VIEWS = {
    "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.unsqueeze.default", "aten.squeeze.dim",
    "aten.squeeze.dims", "aten.squeeze.default", "aten.flatten.using_ints", "aten.permute.default", "aten.transpose.int",
    "aten.t.default", "aten.expand.default", "aten.slice.Tensor", "aten.select.int", "aten.split.Tensor",
    "aten.split_with_sizes.default", "aten.chunk.default", "aten.alias.default", "aten.detach.default", "getitem",
}
_WEIGHT_ARGUMENT = {"aten.linear.default": "weight", "aten.addmm.default": "mat2", "aten.mm.default": "mat2", "aten.matmul.default": "other"}
_INPUT_ARGUMENT = {"aten.linear.default": "input", "aten.addmm.default": "mat1", "aten.mm.default": "self", "aten.matmul.default": "self"}


def _op_name(node) -> str:
    return "getitem" if node.target is operator.getitem else str(node.target)


def _where(node) -> str:
    """``node``'s place in the torch module, for messages and names."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path, kind = list(stack.values())[-1]
    kind = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
    return f"{path or '<root>'} ({kind.rsplit('.', 1)[-1]})"


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _identifier(part: str) -> str:
    """A module path part as an attribute name: kept if an identifier or a
    number (a ``Sequential`` index), else non-word characters → ``_`` and
    ``_`` before a leading digit."""
    if part.isidentifier() or part.isdigit():
        return part
    part = re.sub(r"\W", "_", part)
    return "_" + part if part[:1].isdigit() else part


def _bind(node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    if node.target is operator.getitem:
        return {"self": node.args[0], "index": node.args[1]}
    bound = {}
    for i, argument in enumerate(node.target._schema.arguments):
        if i < len(node.args) and not argument.kwarg_only:
            bound[argument.name] = node.args[i]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


class _Builder:
    def __init__(self, ep, flat_inputs: Sequence[Any]):
        import torch

        self.torch = torch
        self.ep = ep
        self.placeholders: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.values: dict[str, np.ndarray] = {}
        self.baked: dict[str, Any] = {}
        self.inputs: list = []
        self.modules: dict[str, dict] = {}
        self.tensors: dict[str, dict] = {}
        self.units: dict[str, str] = {}
        self.owner: dict[str, tuple[str, str]] = {}  # torch weight → (layer path, layout)
        self.steps: list = []
        self.unsupported: list[str] = []
        self.order = {n: i for i, n in enumerate(ep.graph.nodes)}
        self.nodes = {n.name: n for n in ep.graph.nodes}
        self._read_signature(flat_inputs)

    def _read_signature(self, flat_inputs: Sequence[Any]) -> None:
        torch, ep = self.torch, self.ep
        users = iter(flat_inputs)
        nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        for spec in ep.graph_signature.input_specs:
            name, kind = spec.arg.name, spec.kind.name
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                value = ep.state_dict.get(spec.target) if spec.target in ep.state_dict else ep.constants[spec.target]
                self.placeholders[name] = spec.target
                self.kinds[spec.target] = "param" if kind == "PARAMETER" else "buffer"
                self.values[spec.target] = value
            elif kind == "USER_INPUT":
                example = next(users)
                if isinstance(example, torch.Tensor):
                    val = nodes[name].meta["val"]
                    self.inputs.append([name, [int(d) for d in val.shape], str(val.dtype).removeprefix("torch.")])
                else:
                    self.baked[name] = example
            else:
                raise ConversionError(f"the exported program takes a {kind} input ({spec.target}), which the converter does not map")

    # -- naming -------------------------------------------------------------

    def _free(self, path: str) -> bool:
        """A module path no layer, namespace clash or nnx attribute blocks."""
        parts = path.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        taken = set(self.modules) | {t["path"] + "." + t["attr"] for t in self.tensors.values() if t["kind"] != "layer"}
        return (
            all((p.isidentifier() or p.isdigit()) and not hasattr(Namespace, p) for p in parts)
            and not (prefixes & taken)
            and not any(m.startswith(path + ".") for m in taken)
        )

    def _module_home(self, preferred: str, fallback: str) -> str:
        """``preferred`` (a dotted torch path, each part made an identifier:
        ``block1-0`` → ``block1_0``) if free, else ``fallback`` flattened
        into one identifier, with ``_`` appended until free."""
        preferred = ".".join(_identifier(part) for part in preferred.split("."))
        path = preferred if self._free(preferred) else _identifier(fallback.replace(".", "_"))
        while not self._free(path):
            path += "_"
        return path

    # -- units --------------------------------------------------------------

    def _param(self, node, ndim: int) -> tuple[str, bool] | None:
        """(torch name, transposed) if ``node`` is a parameter of ``ndim``
        dimensions or the transpose of a 2-D one."""
        torch = self.torch
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "placeholder" and node.name in self.placeholders:
            name = self.placeholders[node.name]
            if self.kinds[name] == "param" and self.values[name].ndim == ndim:
                return name, False
        if node.op == "call_function" and str(node.target) in TRANSPOSES and ndim == 2:
            bound = _bind(node)
            swap = str(node.target) == "aten.t.default" or sorted([bound.get("dim0", 0) % 2, bound.get("dim1", 1) % 2]) == [0, 1]
            if str(node.target) == "aten.permute.default":
                swap = [d % 2 for d in bound["dims"]] == [1, 0]
            inner = self._param(bound["self"], 2)
            if swap and inner and not inner[1]:
                return inner[0], True
        return None

    def _layer_tensor(self, torch_name: str, path: str, attr: str, layout: str) -> None:
        self.tensors[torch_name] = {"kind": "layer", "path": path, "attr": attr, "layout": layout,
                                    "shape": list(self.values[torch_name].shape), "dtype": str(self.values[torch_name].dtype).removeprefix("torch.")}

    def _linear_unit(self, node, op: str, bound: dict) -> str | None:
        weight = self._param(bound[_WEIGHT_ARGUMENT[op]], 2)
        if weight is None:
            return None
        name, transposed = weight
        layout = "transpose" if (op == "aten.linear.default") != transposed else "same"
        if name in self.owner:
            path, owned_layout = self.owner[name]
            return path if owned_layout == layout and not self._wants_bias(op, bound) else None
        shape = self.values[name].shape
        fan_in, fan_out = shape[::-1] if layout == "transpose" else shape
        bias = self._bias(op, bound)
        path = self._module_home(name.removesuffix(".weight"), name)
        self.modules[path] = {"kind": "linear", "in": int(fan_in), "out": int(fan_out), "bias": bias is not None}
        self._layer_tensor(name, path, "kernel", layout)
        if bias is not None:
            self._layer_tensor(bias, path, "bias", "same")
        self.owner[name] = (path, layout)
        return path

    def _wants_bias(self, op: str, bound: dict) -> bool:
        return self._bias(op, bound) is not None or (op == "aten.linear.default" and bound["bias"] is not None)

    def _bias(self, op: str, bound: dict) -> str | None:
        if op == "aten.linear.default":
            arg = bound["bias"]
        elif op == "aten.addmm.default" and bound["beta"] == 1 and bound["alpha"] == 1:
            arg = bound["self"]
        else:
            return None
        bias = self._param(arg, 1)
        if bias is None and op == "aten.linear.default" and arg is not None:
            raise ConversionError("linear with a computed bias")
        return bias[0] if bias and bias[0] not in self.tensors else None

    def _conv_unit(self, bound: dict, spatial: int, transposed: bool) -> str:
        """A ``spatial``-D convolution (1 or 2) as an :class:`OpticalConv`,
        or a transposed one as an :class:`OpticalConvTranspose`; a 1-D one
        is a 2-D one of kernel height 1 over one row."""
        kind = f"conv{'_transpose' if transposed else ''}{spatial}d"
        weight = self._param(bound["weight"], 2 + spatial)
        if weight is None:
            raise ConversionError(f"{kind} whose weight is not a parameter")
        if isinstance(bound["padding"], str):
            raise ConversionError(f"{kind} with padding={bound['padding']!r} (give the padding in pixels)")
        name = weight[0]
        if name in self.owner:
            raise ConversionError(f"{kind} weight {name} used by two convolutions")
        groups = int(bound["groups"])
        first, second, *taps = (int(d) for d in self.values[name].shape)
        in_features, out_features = (first, second * groups) if transposed else (second * groups, first)
        bias = self._param(bound["bias"], 1) if bound["bias"] is not None else None
        if bound["bias"] is not None and bias is None:
            raise ConversionError(f"{kind} with a computed bias")
        path = self._module_home(name.removesuffix(".weight"), name)

        def per_axis(argument: str, fill: int) -> list[int]:
            values = [int(v) for v in bound[argument]]
            return [fill] * (2 - spatial) + values * (spatial // len(values))

        module = {"kind": "conv_transpose" if transposed else "conv", "in": in_features, "out": out_features,
                  "kernel": [1] * (2 - spatial) + taps, "stride": per_axis("stride", 1),
                  "padding": per_axis("padding", 0), "dilation": per_axis("dilation", 1),
                  "bias": bias is not None, "groups": groups}
        if transposed:
            module["output_padding"] = per_axis("output_padding", 0)
        self.modules[path] = module
        attr = "kernel" if transposed else "conv.kernel"
        self._layer_tensor(name, path, attr, kind.removesuffix("2d"))
        if bias is not None:
            self._layer_tensor(bias[0], path, "bias" if transposed else "conv.bias", "same")
        self.owner[name] = (path, "conv")
        return path

    def _recurrent_unit(self, bound: dict, cell: str) -> str:
        """An ``nn.LSTM`` or ``nn.GRU`` as an :class:`OpticalRNN`: each
        layer's and direction's ``weight_ih``/``weight_hh`` (and biases) on
        the banks of its :class:`~lumijax.recurrent.Direction`."""
        if bound["train"]:
            raise ConversionError(f"{cell} in training mode (call module.eval() before converting)")
        directions = 2 if bound["bidirectional"] else 1
        per = 4 if bound["has_biases"] else 2
        layers_, params = int(bound["num_layers"]), list(bound["params"])
        if len(params) != layers_ * directions * per:
            raise ConversionError(f"{cell} with {len(params)} weights for {layers_} layer(s) × {directions} "
                                  f"direction(s) (proj_size is not mapped)")
        names = []
        for index, node in enumerate(params):
            param = self._param(node, 2 if index % per < 2 else 1)  # weight_ih, weight_hh[, bias_ih, bias_hh]
            if param is None or param[1]:
                raise ConversionError(f"{cell} whose weights are not parameters")
            if param[0] in self.owner:
                raise ConversionError(f"{cell} weight {param[0]} used twice")
            names.append(param[0])
        w_ih, w_hh = self.values[names[0]], self.values[names[1]]
        prefix = names[0].rpartition(".")[0]
        path = self._module_home(prefix or cell, f"{prefix}_{cell}" if prefix else cell)
        self.modules[path] = {"kind": "recurrent", "cell": cell, "in": int(w_ih.shape[1]), "hidden": int(w_hh.shape[1]),
                              "layers": layers_, "bidirectional": directions == 2, "bias": per == 4}
        banks = ("input", "hidden")
        for index, name in enumerate(names):
            group, role = divmod(index, per)
            layer, reverse = divmod(group, directions)
            bank = f"{path}.l{layer}{'_reverse' if reverse else ''}.{banks[role % 2]}"
            self._layer_tensor(name, bank, "kernel" if role < 2 else "bias", "transpose" if role < 2 else "same")
            self.owner[name] = (bank, "recurrent")
        return path

    def _core_unit(self, node) -> str:
        where = _module_path(node)
        path = self._module_home(f"{where}.{node.name}" if where else node.name, node.name)
        self.modules[path] = {"kind": "core"}
        return path

    def _unit(self, node, op: str, bound: dict) -> str | None:
        if op in CONVS:
            return self._conv_unit(bound, *CONVS[op])
        if op in RECURRENT:
            return self._recurrent_unit(bound, RECURRENT[op])
        if op == ATTENTION:
            if bound["dropout_p"] or bound["enable_gqa"]:
                raise ConversionError("scaled_dot_product_attention with dropout or grouped-query attention")
            return self._core_unit(node)
        if op in WEIGHT_PRODUCTS and (path := self._linear_unit(node, op, bound)):
            return path
        if op in ACTIVATION_PRODUCTS:
            return self._core_unit(node)
        if op in WEIGHT_PRODUCTS:
            raise ConversionError(f"{op.split('.')[1]} whose weight is computed and carries a bias")
        return None

    # -- graph --------------------------------------------------------------

    def _check_in_place(self, node) -> None:
        """An in-place op is replayed functionally, rebinding its operand;
        that is exact unless the operand is or has a view."""
        target = node.args[0]
        if target.op == "call_function" and _op_name(target) in _VIEWS:
            raise ConversionError("an in-place write through a view")
        if any(_op_name(u) in _VIEWS and self.order[u] < self.order[node] for u in target.users if u.op == "call_function"):
            raise ConversionError(f"an in-place write to {target.name!r}, which has views")

    def _functional_arguments(self, op: str, bound: dict) -> dict:
        """An in-place op's arguments under the names of its functional
        op's schema (``dropout_(self, …)`` → ``dropout(input, …)``)."""
        _, name, overload = aten.functional(op).split(".")
        schema = getattr(getattr(self.torch.ops.aten, name), overload)._schema
        names = [argument.name for argument in schema.arguments]
        if len(names) != len(bound):
            raise ConversionError(f"an in-place op whose schema differs from {aten.functional(op)}'s")
        return dict(zip(names, bound.values()))

    def _shapes(self, val: Any) -> Any:
        """A value torch traced (``node.meta["val"]``) with its tensors as
        JAX shapes."""
        if isinstance(val, (list, tuple)):
            return [self._shapes(v) for v in val]
        if isinstance(val, self.torch.Tensor):
            return jax.ShapeDtypeStruct(tuple(int(d) for d in val.shape), aten.dtype_of(str(val.dtype).removeprefix("torch.")))
        return val

    def _check_step(self, node, op: str, arguments: dict) -> None:
        """Runs the op's jnp function on the shapes torch traced (nothing is
        computed) and compares the output shapes with torch's, so that
        arguments the table cannot honour fail here, not at the first call."""
        names = [ref["ref"] for ref in _refs(arguments)]
        leaves = [self._shapes(self.nodes[n].meta.get("val")) for n in names]

        def run(*values):
            table = dict(zip(names, values))
            return aten.OPS[op](**{k: substitute(v, table.__getitem__) for k, v in arguments.items()})

        try:
            result = jax.eval_shape(run, *leaves)
        except aten.UnsupportedArguments as err:
            raise ConversionError(str(err)) from None
        except (TypeError, ValueError, IndexError) as err:
            raise ConversionError(f"the op's jnp form fails on these arguments: {type(err).__name__}: {err}") from None
        expected = self._shapes(node.meta.get("val"))
        got_shapes, want_shapes = _shape_tree(result), _shape_tree(expected)
        if want_shapes is not None and got_shapes != want_shapes:
            raise ConversionError(f"the op's jnp form gives shape {got_shapes} where torch gives {want_shapes}")

    def _plain(self, value: Any) -> Any:
        torch = self.torch
        if isinstance(value, torch.fx.Node):
            return self.baked[value.name] if value.name in self.baked else {"ref": value.name}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, (torch.device, torch.layout, torch.memory_format)):
            return None
        if isinstance(value, (list, tuple)):
            return [self._plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise ConversionError("symbolic (dynamic) shapes; export with static shapes")
        raise ConversionError(f"an argument of type {type(value).__name__}")

    def build(self) -> ProgramSpec:
        for node in self.ep.graph.nodes:
            if node.op != "call_function":
                continue
            op = _op_name(node)
            try:
                bound = _bind(node)
                unit = self._unit(node, op, bound)
                if unit is None and aten.functional(op) not in aten.OPS:
                    raise ConversionError("no mapping for this op")
                if aten.functional(op) != op:
                    bound = self._functional_arguments(op, bound)
                    if not aten.is_identity(aten.functional(op), bound):
                        self._check_in_place(node)
                arguments = {k: self._plain(v) for k, v in bound.items()}
                if unit is None:
                    self._check_step(node, aten.functional(op), arguments)
                self.steps.append([node.name, op, arguments])
                if unit is not None:
                    self.units[node.name] = unit
            except ConversionError as err:
                self.unsupported.append(f"{op} at node {node.name!r} in {_where(node)}: {err}")
        if self.unsupported:
            raise ConversionError("cannot map to the photonic model:\n  " + "\n  ".join(self.unsupported))
        self._place_free_tensors()
        return ProgramSpec(self.inputs, self.steps, self._outputs(), self.modules, self.tensors,
                           {n: t for n, t in self.placeholders.items() if t in self.tensors}, self.units)

    def _place_free_tensors(self) -> None:
        used = {v["ref"] for _, _, args in self.steps for v in _refs(args)}
        for node_name, torch_name in self.placeholders.items():
            if node_name not in used or torch_name in self.tensors:
                continue
            path, _, attr = torch_name.rpartition(".")
            if not self._free(torch_name):  # the name, its parents and its children clash with nothing
                path, attr = "", self._module_home(torch_name.replace(".", "_"), torch_name)
            value = self.values[torch_name]
            self.tensors[torch_name] = {"kind": self.kinds[torch_name], "path": path, "attr": attr, "layout": "same",
                                        "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}

    def _outputs(self) -> Any:
        output = next(n for n in self.ep.graph.nodes if n.op == "output")
        flat = list(output.args[0]) if isinstance(output.args[0], (list, tuple)) else [output.args[0]]
        specs = self.ep.graph_signature.output_specs
        kinds = {s.kind.name for s in specs} - {"USER_OUTPUT"}
        if kinds:
            raise ConversionError(f"the module writes state during the forward pass ({', '.join(sorted(kinds))}); convert it in eval mode")
        outs = [self._plain(v) for v in flat]
        return outs[0] if len(outs) == 1 else outs


def _refs(value: Any):
    if isinstance(value, dict) and "ref" in value:
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def _shape_tree(value: Any) -> Any:
    """The shapes of the arrays in ``value`` (lists kept), ``None`` where
    it holds no array shape."""
    if isinstance(value, (list, tuple)):
        shapes = [_shape_tree(v) for v in value]
        return None if any(s is None for s in shapes) else shapes
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _returns_cache(module: Any) -> bool:
    """Whether ``module`` (a Hugging Face model) returns a key/value cache
    by default: its config says ``use_cache`` and its forward takes it."""
    config = getattr(module, "config", None)
    if not getattr(config, "use_cache", False):
        return False
    return "use_cache" in inspect.signature(module.forward).parameters


def capture(module: Any, example_inputs: Sequence[Any], example_kwargs: Mapping[str, Any] | None = None) -> tuple[ProgramSpec, dict[str, np.ndarray]]:
    """Exports ``module`` (in eval mode) and returns its spec and weights."""
    import torch
    from torch.utils._pytree import tree_flatten

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch converts a torch.nn.Module, got {type(module).__name__}")
    args = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    kwargs = dict(example_kwargs or {})
    notes = []
    if _returns_cache(module) and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
        notes.append("captured with use_cache=False: a key/value cache is state that a static graph does not return")
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # nn.LSTM/GRU re-assign their flat weight list while exported; the weights are parameters all the same
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
        try:
            ep = torch.export.export(module, args, kwargs=kwargs)
        except Exception as err:  # torch.export raises many types; name the module and the cause
            raise ConversionError(f"torch.export could not capture {type(module).__name__}: {type(err).__name__}: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
    builder = _Builder(ep, tree_flatten((args, kwargs))[0])
    spec = dataclasses.replace(builder.build(), notes=notes)
    return spec, state_dict_arrays({name: builder.values[name] for name in spec.tensors})


def from_torch(
    module: Any,
    example_inputs: Sequence[Any] | Any,
    hardware: hw.HardwareConfig | None = None,
    mode: layers.Mode = "ideal",
    *,
    weight_bits: int = 8,
    example_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TorchProgram:
    """Converts any torch module through ``torch.export``.

    Args:
      module: the torch module (put in eval mode).
      example_inputs: the positional inputs to trace with (a tensor or a
        tuple); the program keeps their shapes.
      hardware, mode, weight_bits: the photonic layers' hardware model, mode
        and weight precision.
      example_kwargs: keyword inputs; non-tensor ones (``use_cache=False``)
        are baked into the program.

    Returns:
      A :class:`TorchProgram` taking the tensor inputs in order.

    Raises:
      ConversionError: naming every op it cannot map, with its node and
        the module it sits in.
    """
    spec, weights = capture(module, example_inputs, example_kwargs)
    program = TorchProgram(spec, LayerFactory(hardware or hw.HardwareConfig(), mode, weight_bits), rngs=nnx.Rngs(params=seed, noise=seed + 1))
    load_state_dict(program, weights)
    return program
