"""The recipe registry: architectures by name, from configs, torch modules
and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flax import nnx

from lumijax import hardware as hw
from lumijax import layers
from lumijax.convert import checkpoint
from lumijax.convert.factory import LayerFactory
from lumijax.convert.gpt import GPT, GPTConfig
from lumijax.convert.resnet import ARCHS as RESNETS
from lumijax.convert.resnet import ResNet, ResNetConfig

ARCHS = ("gpt2", "nanogpt", "resnet", *RESNETS)


def recipe_config(arch: str, **config: Any) -> GPTConfig | ResNetConfig:
    """The configuration of ``arch`` with ``config`` overriding its defaults.

    ``gpt2`` takes ``transformers.GPT2Config`` field names (``n_positions``,
    ``activation_function``, …), ``nanogpt`` nanoGPT's (``block_size``,
    ``bias``, …), ``resnet18``… :class:`ResNetConfig` fields, and ``resnet``
    all of them (``block``, ``layers``).
    """
    if arch == "gpt2":
        return GPTConfig.from_hf(**config)
    if arch == "nanogpt":
        return GPTConfig.from_nanogpt(**config)
    if arch == "resnet":
        return ResNetConfig(**config)
    if arch in RESNETS:
        return ResNetConfig.named(arch, **config)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def build(
    config: GPTConfig | ResNetConfig,
    *,
    hardware: hw.HardwareConfig | None = None,
    mode: layers.Mode = "ideal",
    weight_bits: int = 8,
    seed: int = 0,
) -> GPT | ResNet:
    """A photonic model of ``config`` with fresh (random) weights."""
    factory = LayerFactory(hardware or hw.HardwareConfig(), mode, weight_bits)
    model_class = GPT if isinstance(config, GPTConfig) else ResNet
    return model_class(config, factory, rngs=nnx.Rngs(params=seed, noise=seed + 1))


def recipe(arch: str, *, hardware: hw.HardwareConfig | None = None, mode: layers.Mode = "ideal", weight_bits: int = 8, seed: int = 0, **config: Any) -> GPT | ResNet:
    """A photonic ``arch`` (see :data:`ARCHS`) with random weights."""
    return build(recipe_config(arch, **config), hardware=hardware, mode=mode, weight_bits=weight_bits, seed=seed)


def _torch_config(module: Any) -> GPTConfig | ResNetConfig:
    kind = type(module).__name__
    if kind == "GPT2LMHeadModel":
        return GPTConfig.from_hf(module.config)
    try:
        from torchvision.models import ResNet as TorchvisionResNet
    except ImportError:  # pragma: no cover - torchvision is part of the torch extra
        TorchvisionResNet = ()
    if isinstance(module, TorchvisionResNet):
        return ResNetConfig.from_torchvision(module)
    nanogpt = getattr(module, "config", None)
    if all(hasattr(nanogpt, f) for f in ("block_size", "n_embd", "bias")) and hasattr(module, "transformer"):
        return GPTConfig.from_nanogpt(nanogpt)
    raise TypeError(
        f"no recipe for {type(module).__module__}.{kind} (recipes: HF GPT2LMHeadModel, nanoGPT GPT, torchvision ResNet); "
        "convert it with lumijax.convert.from_torch(module, example_inputs)"
    )


def from_torch_recipe(
    module: Any, *, hardware: hw.HardwareConfig | None = None, mode: layers.Mode = "ideal", weight_bits: int = 8
) -> GPT | ResNet:
    """The recipe model of a torch GPT-2, nanoGPT or torchvision ResNet, with
    its weights (and BatchNorm statistics)."""
    model = build(_torch_config(module), hardware=hardware, mode=mode, weight_bits=weight_bits)
    checkpoint.load_state_dict(model, checkpoint.state_dict_arrays(module.state_dict()))
    return model


def load_checkpoint(
    path: str | Path,
    arch: str,
    *,
    hardware: hw.HardwareConfig | None = None,
    mode: layers.Mode = "ideal",
    weight_bits: int = 8,
    **config: Any,
) -> GPT | ResNet:
    """A recipe model filled from a checkpoint file.

    Args:
      path: a ``state_dict`` in ``.pt``/``.pth``/``.bin``/``.ckpt`` (read
        with ``torch.load(..., weights_only=True)``) or ``.safetensors``.
      arch: one of :data:`ARCHS`.
      config: the architecture's fields (see :func:`recipe_config`); a
        nanoGPT training checkpoint's ``model_args`` are used as defaults.

    Raises:
      CheckpointError: an unreadable or unsafe file, or one whose tensors do
        not fit the configuration (every problem named at once).
    """
    raw = checkpoint.read_checkpoint(path)
    if arch == "nanogpt" and isinstance(raw, dict) and isinstance(raw.get("model_args"), dict):
        config = {**raw["model_args"], **config}
    model = recipe(arch, hardware=hardware, mode=mode, weight_bits=weight_bits, **config)
    checkpoint.load_state_dict(model, checkpoint.state_dict_arrays(raw, path))
    return model
