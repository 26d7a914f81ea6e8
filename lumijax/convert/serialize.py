"""A converted model in one msgpack file, so that conversion happens once.

The file holds ``{"format": "lumijax.model", "version", "arch", "config",
"factory", "state", "slot_orders"}``: the recipe (or the torch-free program
spec) to rebuild the module tree, the hardware, mode and weight bits of its
layers, every parameter, batch statistic, buffer and converter range by its
path, and the WDM slot order of planned layers. Reading it executes nothing
and needs no torch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
from flax import nnx

from lumijax import hardware as hw
from lumijax import layers
from lumijax.convert.factory import LayerFactory
from lumijax.convert.gpt import GPT, GPTConfig
from lumijax.convert.program import Buffer, ProgramSpec, TorchProgram
from lumijax.convert.resnet import ResNet, ResNetConfig

FORMAT = "lumijax.model"
VERSION = 2  # 2: converter ranges keep the smallest value seen (RangeState.minimum)
SAVED = (nnx.Param, nnx.BatchStat, Buffer, layers.RangeStat)


class ModelFileError(ValueError):
    """A model file that is not one, or does not fit its own description."""


def _key(path: tuple) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _flat_state(model: nnx.Module) -> tuple[Any, dict[str, Any]]:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Any(*SAVED)))
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return pure, {_key(path): leaf for path, leaf in leaves}


def _array(value: Any) -> dict:
    value = np.asarray(value)
    return {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}


def _factory(model: nnx.Module) -> LayerFactory:
    factory: LayerFactory = model.factory
    cores = layers.photonic_cores(model)
    return dataclasses.replace(factory, mode=cores[0].mode) if cores else factory


def save(model: GPT | ResNet | TorchProgram, path: str | Path) -> Path:
    """Writes ``model`` (a recipe model or a :class:`TorchProgram`) to ``path``."""
    if not hasattr(model, "recipe_config"):
        raise TypeError(f"save takes a model from lumijax.convert, got {type(model).__name__}")
    factory = _factory(model)
    _, flat = _flat_state(model)
    slot_orders = {
        ".".join(map(str, p)): list(node.slot_order)
        for p, node in nnx.iter_graph(model)
        if isinstance(node, layers.QuantizedWeights) and node.slot_order is not None
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "config": model.recipe_config(),
        "factory": {"hardware": factory.hardware.to_dict(), "mode": factory.mode, "weight_bits": factory.weight_bits},
        "state": {k: _array(v) for k, v in flat.items()},
        "slot_orders": slot_orders,
    }
    path = Path(path)
    path.write_bytes(msgpack.packb(payload, use_bin_type=True))
    return path


def _rebuild(arch: str, config: dict, factory: LayerFactory) -> nnx.Module:
    rngs = nnx.Rngs(params=0, noise=1)
    if arch in ("gpt2", "nanogpt"):
        return GPT(GPTConfig(**config), factory, rngs=rngs)
    if arch == "resnet":
        return ResNet(ResNetConfig(**config), factory, rngs=rngs)
    if arch == "torch.export":
        return TorchProgram(ProgramSpec.from_dict(config), factory, rngs=rngs)
    raise ModelFileError(f"unknown architecture {arch!r} in the model file")


@dataclasses.dataclass(frozen=True)
class _BoundedFactory(LayerFactory):
    """A factory that makes at most ``max_cores`` photonic cores: a model
    file's description may not claim more layers than its state holds."""

    max_cores: int = 0
    made: list[int] = dataclasses.field(default_factory=lambda: [0], compare=False)

    def core(self, rngs: nnx.Rngs) -> layers.PhotonicCore:
        self.made[0] += 1
        if self.made[0] > self.max_cores:
            raise ModelFileError(f"the model description asks for more photonic layers than the {self.max_cores} whose state the file holds")
        return super().core(rngs)


def _decode(key: str, entry: Any, like: Any) -> np.ndarray:
    """The array of state entry ``key``, which must have the shape and dtype of ``like``."""
    try:
        dtype, shape = np.dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"])
        data = entry["data"]
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"state entry {key!r} is malformed ({err})") from None
    expected_dtype, expected_shape = np.dtype(like.dtype), tuple(like.shape)
    if shape != expected_shape or dtype != expected_dtype or len(data) != expected_dtype.itemsize * math.prod(shape):
        raise ModelFileError(f"state entry {key!r}: {dtype} {shape} in the file, the model holds {expected_dtype} {expected_shape}")
    return np.frombuffer(data, dtype).reshape(shape).copy()


def load(path: str | Path, *, mode: layers.Mode | None = None) -> GPT | ResNet | TorchProgram:
    """Reads a model written by :func:`save`; ``mode`` overrides the saved one."""
    path = Path(path)
    try:
        payload = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError) as err:
        raise ModelFileError(f"{path}: not a msgpack model file ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a lumijax model file")
    if payload.get("version") != VERSION:
        raise ModelFileError(f"{path}: model file version {payload.get('version')}, this lumijax reads {VERSION}")
    stored = payload.get("state", {})
    if not isinstance(stored, dict):
        raise ModelFileError(f"{path}: the state must be a map")
    try:
        spec = payload["factory"]
        factory = LayerFactory(hw.HardwareConfig(**spec["hardware"]), mode or spec["mode"], int(spec["weight_bits"]))
        # First the shapes alone (nothing allocated), with no more layers
        # than the file holds state for: the description is checked against
        # the data before a model of the size it claims is built.
        cores = sum(key.endswith("core/channel_spacing_nm") for key in stored)
        bounded = _BoundedFactory(factory.hardware, factory.mode, factory.weight_bits, max_cores=cores)
        abstract = nnx.eval_shape(lambda: _rebuild(payload["arch"], payload["config"], bounded))
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: the model description is invalid ({err})") from None
    _, shapes = _flat_state(abstract)
    if set(stored) != set(shapes):
        missing, extra = sorted(set(shapes) - set(stored)), sorted(set(stored) - set(shapes))
        raise ModelFileError(f"{path}: state does not fit the model (missing {missing[:5]}, unexpected {extra[:5]})")
    try:
        values = {k: _decode(k, stored[k], shapes[k]) for k in shapes}
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
    model = _rebuild(payload["arch"], payload["config"], factory)
    pure, _ = _flat_state(model)
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    pure = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(pure), [values[_key(p)] for p, _ in leaves])
    state = nnx.state(model, nnx.Any(*SAVED))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    planned = {".".join(map(str, p)): node for p, node in nnx.iter_graph(model) if isinstance(node, layers.QuantizedWeights)}
    for name, order in payload.get("slot_orders", {}).items():
        if name not in planned:
            raise ModelFileError(f"{path}: slot order for {name!r}, which the model does not have")
        try:
            planned[name].set_slot_order(order)
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: slot order of {name!r}: {err}") from None
    return model
