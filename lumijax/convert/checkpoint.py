"""Torch ``state_dict``\\ s: reading them safely and loading them into recipes.

A ``.pt``/``.pth``/``.bin`` file is read with ``torch.load(...,
weights_only=True)``, which refuses any pickle that would construct objects
other than tensors and plain containers; ``.safetensors`` files hold tensors
only. Nothing else is read. Training checkpoints that wrap the state dict
(``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped, and the prefixes
``torch.compile`` and ``DataParallel`` add (``_orig_mod.``, ``module.``) are
removed.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flax import nnx

from lumijax import layers

_WRAPPERS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("_orig_mod.", "module.")

#: How a torch tensor is laid out in an NNX variable: ``(torch → ours, ours
#: → torch)``. ``"same"``; ``"transpose"``, an ``nn.Linear`` weight ``(out,
#: in)`` into a kernel ``(in, out)``; ``"conv"``, a convolution weight ``(O,
#: I, kh, kw)`` into an NHWC kernel ``(kh, kw, I, O)``; ``"conv1d"``, a 1-D
#: one ``(O, I, k)`` into the kernel ``(1, k, I, O)`` of a one-row 2-D one;
#: ``"conv_transpose"``, a transposed convolution's weight ``(I, O, kh, kw)``
#: into ``(I, kh, kw, O)``; ``"conv_transpose1d"``, ``(I, O, k)`` into ``(I,
#: 1, k, O)``.
LAYOUTS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "same": (lambda a: a, lambda a: a),
    "transpose": (lambda a: a.T, lambda a: a.T),
    "conv": (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    "conv1d": (lambda a: a.transpose(2, 1, 0)[None], lambda a: a[0].transpose(2, 1, 0)),
    "conv_transpose": (lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2)),
    "conv_transpose1d": (lambda a: a.transpose(0, 2, 1)[:, None], lambda a: a[:, 0].transpose(0, 2, 1)),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one torch tensor goes in an NNX model.

    Attributes:
      variable: the NNX variable it fills.
      layout: a key of :data:`LAYOUTS`.
    """

    variable: nnx.Variable
    layout: str = "same"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout = {self.layout!r}: use one of {sorted(LAYOUTS)}")

    def torch_shape(self) -> tuple[int, ...]:
        shape = tuple(self.variable[...].shape)
        return tuple(self.to_torch(np.broadcast_to(np.zeros((), np.float32), shape)).shape)

    def from_torch(self, array: np.ndarray) -> np.ndarray:
        return LAYOUTS[self.layout][0](array)

    def to_torch(self, value: Any) -> Any:
        """The variable's value (numpy or jax) in torch's layout."""
        return LAYOUTS[self.layout][1](value)

    def assign(self, array: np.ndarray) -> None:
        self.variable[...] = np.ascontiguousarray(self.from_torch(array)).astype(self.variable[...].dtype)


class Recipe(Protocol):
    """What a recipe model tells the loader about its torch names."""

    def torch_slots(self) -> dict[str, Slot]: ...

    def torch_aliases(self) -> dict[str, str]: ...

    def torch_ignored(self) -> re.Pattern: ...


def _to_numpy(name: str, value: Any) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
    if value.dtype.is_complex:
        raise CheckpointError(f"checkpoint entry {name!r} is complex ({value.dtype}); recipes hold real weights")
    value = value.detach().cpu()
    return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), found a {type(obj).__name__}")
    for key in _WRAPPERS:
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw object of a checkpoint file, read without executing code.

    Raises:
      CheckpointError: the file is missing, of an unknown kind, or a pickle
        that is not weights-only.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            reason = f" (it pickles a {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused, not a weights-only checkpoint{reason}. Its pickle would construct arbitrary Python "
                "objects, which lumijax never loads; save model.state_dict() instead."
            ) from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None
    raise CheckpointError(f"{path}: unknown checkpoint kind {suffix!r}; use .pt, .pth, .bin, .ckpt or .safetensors")


def state_dict_arrays(obj: Mapping[str, Any], path: str | Path = "<state_dict>") -> dict[str, np.ndarray]:
    """A state dict (possibly wrapped) as float/int numpy arrays by name."""
    return {_strip(k): _to_numpy(k, v) for k, v in _unwrap(obj, Path(path)).items()}


def load_state_dict(model: Recipe, state: Mapping[str, np.ndarray]) -> None:
    """Fills ``model`` from torch-named arrays, checking everything first.

    Raises:
      CheckpointError: listing every missing key, unexpected key, shape
        mismatch, tied pair that differs and non-finite tensor at once;
        nothing is assigned then.
    """
    state = dict(state)
    slots, ignored = model.torch_slots(), model.torch_ignored()
    problems: list[str] = []
    for alias, canonical in model.torch_aliases().items():
        if alias not in state:
            continue
        tied = state.pop(alias)
        if canonical not in state:
            state[canonical] = tied
        elif tied.shape != state[canonical].shape or not np.array_equal(tied, state[canonical]):
            problems.append(f"{alias} differs from {canonical}, but the model ties them")
    missing = [k for k in slots if k not in state]
    unexpected = sorted(k for k in state if k not in slots and not ignored.fullmatch(k))
    for key, slot in slots.items():
        if key in state and tuple(state[key].shape) != slot.torch_shape():
            problems.append(f"shape mismatch for {key}: checkpoint {tuple(state[key].shape)}, model {slot.torch_shape()}")
        elif key in state and not np.all(np.isfinite(state[key])):
            problems.append(f"{key} holds NaN or infinite values")
    problems += [f"missing key {k}" for k in missing] + [f"unexpected key {k}" for k in unexpected]
    if problems:
        raise CheckpointError(f"the checkpoint does not fit {type(model).__name__} ({len(problems)} problems):\n  " + "\n  ".join(problems))
    for key, slot in slots.items():
        slot.assign(state[key])
    for _, node in nnx.iter_graph(model):
        if isinstance(node, layers.QuantizedWeights):
            node.reset_scales()
