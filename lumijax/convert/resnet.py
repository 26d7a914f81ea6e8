"""The ResNet recipe: torchvision ResNets as photonic NNX models.

Torchvision's ResNet v1.5 (the stride of a bottleneck sits on its 3×3
convolution) with the module tree and parameter names of
``torchvision.models.resnet``: ``conv1``, ``bn1``, ``layer1[0].conv1``, …,
``downsample[0]`` (1×1 convolution) and ``downsample[1]`` (BatchNorm), ``fc``.
The model takes NCHW images like torch and computes in NHWC inside.
Convolutions pad explicitly and symmetrically as torch does, max pooling pads
with −∞, and BatchNorm runs on its running statistics (ε = 1e-5) until put
in training mode (``model.train()``), with torch's momentum 0.1 (Flax 0.9) and
the two-pass variance.
A small-image stem (``stem_kernel=3, stem_stride=1, stem_pool=False``) covers
the common CIFAR-style variant of the same torchvision class.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lumijax import layers
from lumijax.convert.checkpoint import Slot
from lumijax.convert.factory import LayerFactory

Array = jax.Array

STAGE_MULTIPLIERS = (1, 2, 4, 8)
EXPANSION = {"basic": 1, "bottleneck": 4}
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A torchvision ResNet.

    Attributes:
      block: ``"basic"`` (two 3×3) or ``"bottleneck"`` (1×1, 3×3, 1×1, ×4).
      layers: blocks per stage (four stages of width × 1, 2, 4, 8 channels).
      num_classes: outputs of ``fc``.
      in_channels: image channels.
      stem_kernel, stem_stride: the first convolution (torchvision: 7, 2);
        its padding is ``stem_kernel // 2``.
      stem_pool: the 3×3 stride-2 max pool after the stem.
      width: channels of the stem and the first stage (torchvision: 64);
        smaller widths make small networks of the same family.
    """

    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 1000
    in_channels: int = 3
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    width: int = 64

    def __post_init__(self) -> None:
        if self.block not in EXPANSION:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if len(self.layers) != len(STAGE_MULTIPLIERS) or min(self.layers) < 1:
            raise ValueError(f"layers must be four block counts ≥ 1, got {self.layers}")
        for name in ("num_classes", "in_channels", "stem_kernel", "stem_stride", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in STAGE_MULTIPLIERS)

    @classmethod
    def named(cls, arch: str, **overrides) -> ResNetConfig:
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; known: {sorted(ARCHS)}")
        block, counts = ARCHS[arch]
        return cls(block=block, layers=counts, **overrides)

    @classmethod
    def from_torchvision(cls, model) -> ResNetConfig:
        """Reads the configuration off a ``torchvision.models.ResNet``."""
        import torch
        from torchvision.models.resnet import BasicBlock, Bottleneck

        first = model.layer1[0]
        if not isinstance(first, (BasicBlock, Bottleneck)):
            raise ValueError(f"unsupported ResNet block {type(first).__name__}")
        if any(m.groups != 1 or m.dilation != (1, 1) for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            raise ValueError("grouped or dilated convolutions (ResNeXt, dilated ResNets) are not supported by the ResNet recipe")
        conv1 = model.conv1
        if conv1.padding != (conv1.kernel_size[0] // 2,) * 2 or conv1.kernel_size[0] != conv1.kernel_size[1]:
            raise ValueError(f"unsupported stem convolution {conv1}")
        if isinstance(first, Bottleneck) and first.conv1.out_channels != model.conv1.out_channels:
            raise ValueError("wide ResNets (width_per_group ≠ 64) are not supported by the ResNet recipe")
        return cls(
            block="basic" if isinstance(first, BasicBlock) else "bottleneck",
            layers=tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)),
            num_classes=model.fc.out_features,
            in_channels=conv1.in_channels,
            stem_kernel=conv1.kernel_size[0],
            stem_stride=conv1.stride[0],
            stem_pool=not isinstance(model.maxpool, torch.nn.Identity),
            width=conv1.out_channels,
        )


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, use_running_average=True, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, width: int, stride: int, factory: LayerFactory, *, rngs: nnx.Rngs):
        self.conv1 = factory.conv(cin, width, 3, stride, 1, use_bias=False, rngs=rngs)
        self.bn1 = _batch_norm(width, rngs)
        self.conv2 = factory.conv(width, width, 3, 1, 1, use_bias=False, rngs=rngs)
        self.bn2 = _batch_norm(width, rngs)
        self.downsample = _downsample(cin, width, stride, factory, rngs)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x, observe=observe)))
        y = self.bn2(self.conv2(y, observe=observe))
        return jax.nn.relu(y + _shortcut(self.downsample, x, observe))


class Bottleneck(nnx.Module):
    def __init__(self, cin: int, width: int, stride: int, factory: LayerFactory, *, rngs: nnx.Rngs):
        cout = width * EXPANSION["bottleneck"]
        self.conv1 = factory.conv(cin, width, 1, 1, 0, use_bias=False, rngs=rngs)
        self.bn1 = _batch_norm(width, rngs)
        self.conv2 = factory.conv(width, width, 3, stride, 1, use_bias=False, rngs=rngs)
        self.bn2 = _batch_norm(width, rngs)
        self.conv3 = factory.conv(width, cout, 1, 1, 0, use_bias=False, rngs=rngs)
        self.bn3 = _batch_norm(cout, rngs)
        self.downsample = _downsample(cin, cout, stride, factory, rngs)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x, observe=observe)))
        y = jax.nn.relu(self.bn2(self.conv2(y, observe=observe)))
        y = self.bn3(self.conv3(y, observe=observe))
        return jax.nn.relu(y + _shortcut(self.downsample, x, observe))


def _downsample(cin: int, cout: int, stride: int, factory: LayerFactory, rngs: nnx.Rngs) -> nnx.List | None:
    if stride == 1 and cin == cout:
        return None
    return nnx.List([factory.conv(cin, cout, 1, stride, 0, use_bias=False, rngs=rngs), _batch_norm(cout, rngs)])


def _shortcut(downsample: nnx.List | None, x: Array, observe: bool) -> Array:
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x, observe=observe))


def max_pool_3x3_s2(x: Array) -> Array:
    """torch ``MaxPool2d(3, 2, padding=1)`` on NHWC: the padding is −∞."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)


class ResNet(nnx.Module):
    """A torchvision ResNet with every convolution and ``fc`` on the core.

    ``model(x)`` maps NCHW images ``(N, in_channels, H, W)`` to logits
    ``(N, num_classes)``.
    """

    def __init__(self, config: ResNetConfig, factory: LayerFactory | None = None, *, rngs: nnx.Rngs):
        factory = factory or LayerFactory()
        self.config = config
        self.factory = factory
        block = BasicBlock if config.block == "basic" else Bottleneck
        expansion = EXPANSION[config.block]
        k = config.stem_kernel
        widths = config.stage_widths
        self.conv1 = factory.conv(config.in_channels, widths[0], k, config.stem_stride, k // 2, use_bias=False, rngs=rngs)
        self.bn1 = _batch_norm(widths[0], rngs)
        cin = widths[0]
        for stage, (width, count) in enumerate(zip(widths, config.layers)):
            blocks = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(cin, width, stride, factory, rngs=rngs))
                cin = width * expansion
            setattr(self, f"layer{stage + 1}", nnx.List(blocks))
        self.fc = factory.linear(cin, config.num_classes, rngs=rngs)

    @property
    def arch(self) -> str:
        return "resnet"

    def stages(self) -> list[nnx.List]:
        return [getattr(self, f"layer{i}") for i in range(1, len(STAGE_MULTIPLIERS) + 1)]

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"ResNet takes NCHW images with {self.config.in_channels} channels, got shape {x.shape}")
        x = jnp.transpose(x, (0, 2, 3, 1))
        x = jax.nn.relu(self.bn1(self.conv1(x, observe=observe)))
        if self.config.stem_pool:
            x = max_pool_3x3_s2(x)
        for stage in self.stages():
            for block in stage:
                x = block(x, observe=observe)
        return self.fc(jnp.mean(x, axis=(1, 2)), observe=observe)

    def example_inputs(self, batch: int = 1, size: int = 64) -> tuple[Array]:
        """Images ``(batch, in_channels, size, size)``."""
        return (jnp.zeros((batch, self.config.in_channels, size, size), jnp.float32),)

    def torch_slots(self) -> dict[str, Slot]:
        slots: dict[str, Slot] = {}

        def conv(prefix: str, layer: layers.OpticalConv) -> None:
            slots[f"{prefix}.weight"] = Slot(layer.conv.kernel, "conv")

        def norm(prefix: str, bn: nnx.BatchNorm) -> None:
            for torch_name, variable in (("weight", bn.scale), ("bias", bn.bias), ("running_mean", bn.mean), ("running_var", bn.var)):
                slots[f"{prefix}.{torch_name}"] = Slot(variable)

        conv("conv1", self.conv1)
        norm("bn1", self.bn1)
        for s, stage in enumerate(self.stages(), start=1):
            for i, block in enumerate(stage):
                p = f"layer{s}.{i}"
                for j in (1, 2, 3):
                    if hasattr(block, f"conv{j}"):
                        conv(f"{p}.conv{j}", getattr(block, f"conv{j}"))
                        norm(f"{p}.bn{j}", getattr(block, f"bn{j}"))
                if block.downsample is not None:
                    conv(f"{p}.downsample.0", block.downsample[0])
                    norm(f"{p}.downsample.1", block.downsample[1])
        slots["fc.weight"] = Slot(self.fc.kernel, "transpose")
        slots["fc.bias"] = Slot(self.fc.bias)
        return slots

    def torch_aliases(self) -> dict[str, str]:
        return {}

    def torch_ignored(self) -> re.Pattern:
        return re.compile(r".*num_batches_tracked")

    def recipe_config(self) -> dict:
        return dataclasses.asdict(self.config)
