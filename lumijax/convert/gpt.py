"""The GPT recipe: HF ``GPT2LMHeadModel`` and nanoGPT as photonic NNX models.

The module tree mirrors torch's (``transformer.h[0].attn.c_attn``, …), so
torch parameter names map one to one. Both families are the same network:
token and position embeddings, pre-LayerNorm blocks with fused QKV
attention and a 4× MLP, a final LayerNorm, and an output head tied to the
token embedding. They differ in the torch weight layout (HF ``Conv1D``
stores ``(in, out)``, nanoGPT's ``nn.Linear`` ``(out, in)``), the GELU
(HF ``gelu_new`` is the tanh form, nanoGPT ``nn.GELU()`` the exact one) and
nanoGPT's optional biases.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lumijax import layers
from lumijax.convert.checkpoint import Slot
from lumijax.convert.factory import LayerFactory

Array = jax.Array

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """A GPT's shape and numerics.

    Attributes:
      vocab_size, block_size (longest sequence), n_embd, n_layer, n_head.
      n_inner: MLP width (default ``4·n_embd``).
      bias: biases in the linear layers and LayerNorms.
      layer_norm_epsilon: LayerNorm ε (torch's default 1e-5).
      activation: a key of ``ACTIVATIONS``.
      scale_attn_weights: scale logits by ``1/√head_dim``.
      scale_attn_by_inverse_layer_idx: also by ``1/(layer + 1)``.
      layout: the torch weight layout, ``"conv1d"`` (HF, ``(in, out)``) or
        ``"linear"`` (nanoGPT, ``(out, in)``).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    layout: Literal["conv1d", "linear"] = "conv1d"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.layout not in ("conv1d", "linear"):
            raise ValueError(f"layout must be 'conv1d' or 'linear', got {self.layout!r}")
        for name in ("vocab_size", "block_size", "n_embd", "n_layer", "n_head"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, config: Any = None, **overrides: Any) -> GPTConfig:
        """From a ``transformers.GPT2Config`` (or its field names as keywords)."""
        fields = dict(config.to_dict()) if config is not None else {}
        fields.update(overrides)
        hf_names = {"vocab_size": "vocab_size", "n_positions": "block_size", "n_embd": "n_embd", "n_layer": "n_layer",
                    "n_head": "n_head", "n_inner": "n_inner", "layer_norm_epsilon": "layer_norm_epsilon",
                    "activation_function": "activation", "scale_attn_weights": "scale_attn_weights",
                    "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx"}
        if config is None and (unknown := set(fields) - set(hf_names)):
            raise TypeError(f"unknown GPT2Config fields {sorted(unknown)}; known: {sorted(hf_names)}")
        return cls(**{ours: fields[hf] for hf, ours in hf_names.items() if hf in fields}, layout="conv1d")

    @classmethod
    def from_nanogpt(cls, config: Any = None, **overrides: Any) -> GPTConfig:
        """From a nanoGPT ``GPTConfig`` (or its field names as keywords);
        ``dropout`` is accepted and ignored (inference and eval semantics)."""
        names = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")
        fields = {k: getattr(config, k) for k in names} if config is not None else {}
        fields.update(overrides)
        fields.pop("dropout", None)
        if unknown := set(fields) - set(names):
            raise TypeError(f"unknown nanoGPT config fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**fields, activation="gelu", layout="linear")


def _layer_norm(config: GPTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, use_bias=config.bias, use_fast_variance=False, rngs=rngs)


class CausalSelfAttention(nnx.Module):
    """Fused-QKV causal self-attention; ``QKᵀ`` and ``AV`` run on ``core``."""

    def __init__(self, config: GPTConfig, layer_index: int, factory: LayerFactory, *, rngs: nnx.Rngs):
        self.c_attn = factory.linear(config.n_embd, 3 * config.n_embd, use_bias=config.bias, rngs=rngs)
        self.c_proj = factory.linear(config.n_embd, config.n_embd, use_bias=config.bias, rngs=rngs)
        self.core = factory.core(rngs)
        self.n_head = config.n_head
        head_dim = config.n_embd // config.n_head
        self.scale = (head_dim**-0.5 if config.scale_attn_weights else 1.0) / (
            layer_index + 1 if config.scale_attn_by_inverse_layer_idx else 1
        )

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        b, t, c = x.shape
        heads = lambda y: y.reshape(b, t, self.n_head, c // self.n_head).transpose(0, 2, 1, 3)
        q, k, v = (heads(y) for y in jnp.split(self.c_attn(x, observe=observe), 3, axis=-1))
        y = layers.attention(self.core, q, k, v, scale=self.scale, causal=True)
        return self.c_proj(y.transpose(0, 2, 1, 3).reshape(b, t, c), observe=observe)


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, factory: LayerFactory, *, rngs: nnx.Rngs):
        self.c_fc = factory.linear(config.n_embd, config.mlp_width, use_bias=config.bias, rngs=rngs)
        self.c_proj = factory.linear(config.mlp_width, config.n_embd, use_bias=config.bias, rngs=rngs)
        self.activation = config.activation

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x, observe=observe)), observe=observe)


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, layer_index: int, factory: LayerFactory, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(config, rngs)
        self.attn = CausalSelfAttention(config, layer_index, factory, rngs=rngs)
        self.ln_2 = _layer_norm(config, rngs)
        self.mlp = MLP(config, factory, rngs=rngs)

    def __call__(self, x: Array, *, observe: bool = False) -> Array:
        x = x + self.attn(self.ln_1(x), observe=observe)
        return x + self.mlp(self.ln_2(x), observe=observe)


class GPTModel(nnx.Module):
    """Embeddings, blocks and final LayerNorm (torch's ``transformer``)."""

    def __init__(self, config: GPTConfig, factory: LayerFactory, *, rngs: nnx.Rngs):
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, rngs=rngs)
        self.wpe = nnx.Embed(config.block_size, config.n_embd, rngs=rngs)
        self.h = nnx.List([Block(config, i, factory, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = _layer_norm(config, rngs)

    def __call__(self, idx: Array, *, observe: bool = False) -> Array:
        x = self.wte(idx) + self.wpe(jnp.arange(idx.shape[-1]))
        for block in self.h:
            x = block(x, observe=observe)
        return self.ln_f(x)


class GPT(nnx.Module):
    """A GPT language model with every matrix product on the photonic core.

    ``model(idx)`` maps token ids ``(batch, T)`` (int, ``T ≤ block_size``)
    to logits ``(batch, T, vocab_size)``.
    """

    def __init__(self, config: GPTConfig, factory: LayerFactory | None = None, *, rngs: nnx.Rngs):
        factory = factory or LayerFactory()
        self.config = config
        self.factory = factory
        self.transformer = GPTModel(config, factory, rngs=rngs)
        self.lm_head = factory.tied_head(self.transformer.wte, rngs)

    @property
    def arch(self) -> str:
        return "gpt2" if self.config.layout == "conv1d" else "nanogpt"

    def __call__(self, idx: Array, *, observe: bool = False) -> Array:
        idx = jnp.asarray(idx)
        if idx.ndim != 2 or not jnp.issubdtype(idx.dtype, jnp.integer):
            raise ValueError(f"GPT takes integer token ids (batch, T), got {idx.dtype} {idx.shape}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size = {self.config.block_size}")
        return self.lm_head(self.transformer(idx, observe=observe), observe=observe)

    def example_inputs(self, batch: int = 1, length: int | None = None) -> tuple[Array]:
        """Token ids ``(batch, length)`` (default: the block size, at most 64)."""
        return (jnp.zeros((batch, length or min(self.config.block_size, 64)), jnp.int32),)

    def torch_slots(self) -> dict[str, Slot]:
        weight: Any = "same" if self.config.layout == "conv1d" else "transpose"
        t = self.transformer
        slots = {"transformer.wte.weight": Slot(t.wte.embedding), "transformer.wpe.weight": Slot(t.wpe.embedding)}

        def norm(prefix: str, ln: nnx.LayerNorm) -> None:
            slots[f"{prefix}.weight"] = Slot(ln.scale)
            if ln.bias is not None:
                slots[f"{prefix}.bias"] = Slot(ln.bias)

        def linear(prefix: str, layer: layers.OpticalLinear) -> None:
            slots[f"{prefix}.weight"] = Slot(layer.kernel, weight)
            if layer.bias is not None:
                slots[f"{prefix}.bias"] = Slot(layer.bias)

        for i, block in enumerate(t.h):
            p = f"transformer.h.{i}"
            norm(f"{p}.ln_1", block.ln_1)
            linear(f"{p}.attn.c_attn", block.attn.c_attn)
            linear(f"{p}.attn.c_proj", block.attn.c_proj)
            norm(f"{p}.ln_2", block.ln_2)
            linear(f"{p}.mlp.c_fc", block.mlp.c_fc)
            linear(f"{p}.mlp.c_proj", block.mlp.c_proj)
        norm("transformer.ln_f", t.ln_f)
        return slots

    def torch_aliases(self) -> dict[str, str]:
        return {"lm_head.weight": "transformer.wte.weight"}

    def torch_ignored(self) -> re.Pattern:
        return re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, rebuilt here

    def recipe_config(self) -> dict:
        return dataclasses.asdict(self.config)
