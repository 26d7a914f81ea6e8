"""The Photonic Execution Graph: a static graph built from a photonic model.

:func:`build` walks a converted GPT or ResNet (:mod:`lumijax.convert`) and
writes what the hardware executes: nodes in topological order (NHWC images,
the op set of ``export/FORMAT.md`` §6), weights as the core holds them —
``f32`` for a model in ideal mode, integer codes with per-channel scales and
zero points otherwise — folded batch norms, the hardware, and per photonic
op its converters, planned spacing, detector SNR, slot order and coupling
matrices. :mod:`lumijax.lmn` writes it to a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumijax import hardware as hw
from lumijax import layers, quant
from lumijax.convert.gpt import GPT
from lumijax.convert.resnet import ResNet


class ExportError(ValueError):
    """A model or a setting the PEG cannot express."""


@dataclasses.dataclass(frozen=True)
class Value:
    """A tensor the graph takes or computes."""

    name: str
    dtype: str  # "f32" | "i32"
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A constant: weights, tables, folded norms, coupling matrices.

    ``quant`` (for weight codes) is ``{"bits", "scale", "zero_point",
    "lut"}`` with the names of the scale and zero-point tensors.
    """

    name: str
    array: np.ndarray
    quant: dict | None = None


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, str]
    attrs: dict[str, Any]


@dataclasses.dataclass
class PEG:
    """A Photonic Execution Graph (see ``export/FORMAT.md``)."""

    inputs: list[str]
    outputs: list[str]
    values: dict[str, Value]
    nodes: list[Node]
    tensors: dict[str, Tensor]
    hardware: hw.HardwareConfig
    wdm: dict | None
    metadata: dict[str, str]


DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32", np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8"}


class _Builder:
    """Accumulates values, tensors and nodes with unique names."""

    def __init__(self, mode: str):
        self.mode = mode
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = {}
        self.inputs: list[str] = []
        self._weights: dict[int, str] = {}

    def input(self, name: str, dtype: str, shape: Sequence[int]) -> str:
        self.values[name] = Value(name, dtype, tuple(int(d) for d in shape))
        self.inputs.append(name)
        return name

    def tensor(self, name: str, array: Any, quant_info: dict | None = None) -> str:
        array = np.ascontiguousarray(np.asarray(array))
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        if array.dtype not in DTYPES:
            raise ExportError(f"tensor {name!r} has dtype {array.dtype}, which .lmn does not carry")
        if name in self.tensors:
            raise ExportError(f"two tensors named {name!r}")
        self.tensors[name] = Tensor(name, array, quant_info)
        return name

    def node(self, name: str, op: str, inputs: Sequence[str], shape: Sequence[int], *, params=None, attrs=None, dtype="f32") -> str:
        if name in self.values:
            raise ExportError(f"two values named {name!r}")
        out = name
        self.values[out] = Value(out, dtype, tuple(int(d) for d in shape))
        self.nodes.append(Node(name, op, tuple(inputs), (out,), dict(params or {}), dict(attrs or {})))
        return out

    def shape(self, value: str) -> tuple[int, ...]:
        return self.values[value].shape

    # -- photonic layers --------------------------------------------------------

    def weights(self, name: str, layer: layers.QuantizedWeights) -> str:
        """The layer's weight matrix ``(out, in)``: f32 in ideal mode, else
        its LSQ codes. A matrix already written (tied) is reused."""
        key = id(layer)
        if key in self._weights:
            return self._weights[key]
        w = np.asarray(layer.weight_matrix(), np.float32)
        if self.mode == "ideal":
            tensor = self.tensor(f"{name}.weight", w)
        else:
            bits = layer.weight_bits
            if bits > 8:
                raise ExportError(f"{name}: {bits}-bit weights; .lmn codes are at most 8 bits")
            scale = np.asarray(layer.scale(), np.float32).reshape(-1)
            lo, hi = quant.code_range(bits)
            codes = np.clip(np.round(w / scale[:, None]), lo, hi).astype(np.int8)
            info = {"bits": bits, "scale": self.tensor(f"{name}.weight.scale", scale),
                    "zero_point": self.tensor(f"{name}.weight.zero_point", np.zeros(scale.shape, np.int32)), "lut": None}
            tensor = self.tensor(f"{name}.weight", codes, info)
        self._weights[key] = tensor
        return tensor

    def core(self, name: str, core: layers.PhotonicCore, slot_order: Sequence[int] | None = None) -> dict:
        """The ``core`` attribute of a photonic op (FORMAT.md §7.2)."""
        config = core.config()
        spacing = float(core.channel_spacing_nm[...])
        drift = hw.thermal_drift_nm(config, jnp.broadcast_to(jnp.asarray(core.drift_K, jnp.float32), (config.num_channels,)))
        ranges = [core.input_range.get_value(), core.output_range.get_value()]
        coupling = self.tensor(f"{name}.coupling", np.asarray(hw.coupling_matrix(config, drift), np.float32))
        compensation = self.tensor(f"{name}.compensation", np.asarray(hw.coupling_matrix(config), np.float32)) if core.compensate else None
        return {
            "input_bits": int(core.input_bits),
            "output_bits": int(core.output_bits),
            "input_range": float(ranges[0].range) if int(ranges[0].count) > 0 else None,
            "input_signed": bool(ranges[0].signed) if int(ranges[0].count) > 0 else None,
            "output_range": float(ranges[1].range) if int(ranges[1].count) > 0 else None,
            "channel_spacing_nm": spacing,
            "snr": float(hw.snr(config, include_crosstalk=False)),
            "slot_order": list(map(int, slot_order)) if slot_order is not None else None,
            "coupling": coupling,
            "compensation": compensation,
        }

    def linear(self, name: str, x: str, layer: layers.QuantizedWeights) -> str:
        weight = self.weights(name, layer)
        out_features = layer.weight_matrix().shape[0]
        params = {"weight": weight}
        bias = getattr(layer, "bias", None)
        if bias is not None:
            params["bias"] = self.tensor(f"{name}.bias", np.asarray(bias[...], np.float32))
        attrs = {"core": self.core(name, layer.core, layer.slot_order)}
        return self.node(name, "linear", [x], self.shape(x)[:-1] + (out_features,), params=params, attrs=attrs)

    def conv(self, name: str, x: str, layer: layers.OpticalConv) -> str:
        if layer.groups > 1:
            raise ValueError(f"{name}: a grouped convolution (groups = {layer.groups}) has no .lmn node")
        if layer.geometry.dilation != (1, 1):
            raise ValueError(f"{name}: a dilated convolution (dilation = {layer.geometry.dilation}) has no .lmn node")
        n, h, w, _ = self.shape(x)
        kh, kw, _, cout = layer.conv.kernel[...].shape
        (pt, pb), (pl, pr) = layer.conv.padding
        sh, sw = layer.strides
        params = {"weight": self.weights(name, layer)}
        if layer.conv.bias is not None:
            params["bias"] = self.tensor(f"{name}.bias", np.asarray(layer.conv.bias[...], np.float32))
        attrs = {"kernel": [kh, kw], "stride": [sh, sw], "padding": [[pt, pb], [pl, pr]],
                 "core": self.core(name, layer.core, layer.slot_order)}
        shape = (n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, cout)
        return self.node(name, "conv2d", [x], shape, params=params, attrs=attrs)

    def batch_norm(self, name: str, x: str, bn: nnx.BatchNorm) -> str:
        """Folded: ``x·γ/√(var + ε) + (β − mean·γ/√(var + ε))``."""
        scale = np.asarray(bn.scale[...], np.float64) / np.sqrt(np.asarray(bn.var[...], np.float64) + bn.epsilon)
        shift = np.asarray(bn.bias[...], np.float64) - np.asarray(bn.mean[...], np.float64) * scale
        params = {"scale": self.tensor(f"{name}.scale", scale), "shift": self.tensor(f"{name}.shift", shift)}
        return self.node(name, "scale_shift", [x], self.shape(x), params=params)

    def layer_norm(self, name: str, x: str, ln: nnx.LayerNorm) -> str:
        params = {"scale": self.tensor(f"{name}.scale", np.asarray(ln.scale[...], np.float32))}
        if ln.bias is not None:
            params["bias"] = self.tensor(f"{name}.bias", np.asarray(ln.bias[...], np.float32))
        return self.node(name, "layer_norm", [x], self.shape(x), params=params, attrs={"eps": float(ln.epsilon)})

    def unary(self, name: str, op: str, x: str, **attrs: Any) -> str:
        return self.node(name, op, [x], self.shape(x), attrs=attrs)


def _resnet(b: _Builder, model: ResNet, x: str) -> str:
    n, c, h, w = b.shape(x)
    y = b.node("input.nhwc", "transpose", [x], (n, h, w, c), attrs={"perm": [0, 2, 3, 1]})
    y = b.unary("relu", "relu", b.batch_norm("bn1", b.conv("conv1", y, model.conv1), model.bn1))
    if model.config.stem_pool:
        n, h, w, c = b.shape(y)
        y = b.node("maxpool", "max_pool2d", [y], (n, (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1, c),
                   attrs={"window": [3, 3], "stride": [2, 2], "padding": [[1, 1], [1, 1]]})
    for s, stage in enumerate(model.stages(), start=1):
        for i, block in enumerate(stage):
            p = f"layer{s}.{i}"
            shortcut = y
            count = 3 if hasattr(block, "conv3") else 2
            for j in range(1, count + 1):
                y = b.batch_norm(f"{p}.bn{j}", b.conv(f"{p}.conv{j}", y, getattr(block, f"conv{j}")), getattr(block, f"bn{j}"))
                if j < count:
                    y = b.unary(f"{p}.relu{j}", "relu", y)
            if block.downsample is not None:
                conv, bn = block.downsample
                shortcut = b.batch_norm(f"{p}.downsample.1", b.conv(f"{p}.downsample.0", shortcut, conv), bn)
            y = b.unary(f"{p}.relu", "relu", b.node(f"{p}.add", "add", [y, shortcut], b.shape(y)))
    n, _, _, c = b.shape(y)
    y = b.node("avgpool", "global_avg_pool", [y], (n, c))
    return b.linear("fc", y, model.fc)


def _gpt(b: _Builder, model: GPT, idx: str) -> str:
    config, t = model.config, model.transformer
    if config.activation not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"):
        raise ExportError(f"activation {config.activation!r} has no .lmn op")
    n, length = b.shape(idx)
    table = b.tensor("transformer.wte.weight", np.asarray(t.wte.embedding[...], np.float32))
    x = b.node("transformer.wte", "embedding", [idx], (n, length, config.n_embd), params={"table": table})
    wpe = b.tensor("transformer.wpe.weight", np.asarray(t.wpe.embedding[...], np.float32))
    x = b.node("transformer.wpe", "add_positions", [x], b.shape(x), params={"table": wpe})
    if b.mode == "ideal":
        b._weights[id(model.lm_head)] = table  # tied: the head reads the embedding table
    for i, block in enumerate(t.h):
        p = f"transformer.h.{i}"
        attn = block.attn
        h = b.linear(f"{p}.attn.c_attn", b.layer_norm(f"{p}.ln_1", x, block.ln_1), attn.c_attn)
        h = b.node(f"{p}.attn", "causal_attention", [h], b.shape(x),
                   attrs={"heads": attn.n_head, "scale": float(attn.scale), "core": b.core(f"{p}.attn", attn.core)})
        x = b.node(f"{p}.add_1", "add", [x, b.linear(f"{p}.attn.c_proj", h, attn.c_proj)], b.shape(x))
        h = b.linear(f"{p}.mlp.c_fc", b.layer_norm(f"{p}.ln_2", x, block.ln_2), block.mlp.c_fc)
        if config.activation == "relu":
            h = b.unary(f"{p}.mlp.act", "relu", h)
        else:
            h = b.unary(f"{p}.mlp.act", "gelu", h, approximate="none" if config.activation == "gelu" else "tanh")
        x = b.node(f"{p}.add_2", "add", [x, b.linear(f"{p}.mlp.c_proj", h, block.mlp.c_proj)], b.shape(x))
    x = b.layer_norm("transformer.ln_f", x, t.ln_f)
    return b.linear("lm_head", x, model.lm_head)


def _mode(model: nnx.Module) -> str:
    modes = {core.mode for core in layers.photonic_cores(model)}
    if len(modes) != 1:
        raise ExportError(f"the model's cores are in modes {sorted(modes)}; set one with layers.set_mode")
    return modes.pop()


def build(model: GPT | ResNet, example_inputs: Sequence[Any], *, hardware: hw.HardwareConfig | None = None, wdm: dict | None = None) -> PEG:
    """The PEG of a converted GPT or ResNet for inputs shaped like ``example_inputs``.

    Args:
      model: a recipe model of :mod:`lumijax.convert`.
      example_inputs: one array: token ids ``(N, T)`` or NCHW images.
      hardware: the hardware recorded in the file (default the model's).
      wdm: the planner's map (:meth:`lumijax.wdm.WDMMap.to_dict`), if any.
    """
    if not isinstance(model, (GPT, ResNet)):
        raise ExportError(f"the PEG covers the GPT and ResNet recipes; got {type(model).__name__}")
    (x,) = [np.asarray(v) for v in example_inputs]
    b = _Builder(_mode(model))
    if isinstance(model, GPT):
        if x.ndim != 2 or x.shape[1] > model.config.block_size:
            raise ExportError(f"GPT takes token ids (N, T ≤ {model.config.block_size}), got shape {x.shape}")
        out = _gpt(b, model, b.input("idx", "i32", x.shape))
    else:
        if x.ndim != 4 or x.shape[1] != model.config.in_channels:
            raise ExportError(f"ResNet takes NCHW images with {model.config.in_channels} channels, got shape {x.shape}")
        out = _resnet(b, model, b.input("x", "f32", x.shape))
    metadata = {"arch": model.arch, "mode": b.mode, "config": repr(model.recipe_config())}
    return PEG(b.inputs, [out], b.values, b.nodes, b.tensors, hardware or model.factory.hardware, wdm, metadata)
