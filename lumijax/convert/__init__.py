"""PyTorch → photonic Flax NNX.

Two ways in:

* recipes (:func:`recipe`, :func:`from_torch_recipe`, :func:`load_checkpoint`)
  for GPT-2, nanoGPT and torchvision ResNets, with module trees and
  parameter names that mirror torch's;
* :func:`from_torch`, which captures any module with ``torch.export`` and
  interprets its ATen graph, every matrix product on a photonic layer.

:func:`save` and :func:`load` keep a converted model in a msgpack file, so
conversion happens once.
"""

from lumijax.convert.capture import capture, from_torch
from lumijax.convert.checkpoint import CheckpointError, load_state_dict, read_checkpoint, state_dict_arrays
from lumijax.convert.factory import LayerFactory
from lumijax.convert.gpt import GPT, GPTConfig
from lumijax.convert.program import ConversionError, ProgramSpec, TorchProgram
from lumijax.convert.recipes import ARCHS, build, from_torch_recipe, load_checkpoint, recipe, recipe_config
from lumijax.convert.resnet import ResNet, ResNetConfig
from lumijax.convert.serialize import ModelFileError, load, save
from lumijax.convert.summary import ConversionSummary, summarize

__all__ = [
    "ARCHS", "GPT", "GPTConfig", "ResNet", "ResNetConfig", "LayerFactory", "CheckpointError",
    "build", "recipe", "recipe_config", "from_torch_recipe", "load_checkpoint", "load_state_dict",
    "read_checkpoint", "state_dict_arrays", "from_torch", "capture", "ConversionError", "ProgramSpec", "TorchProgram",
    "save", "load", "ModelFileError", "summarize", "ConversionSummary",
]
