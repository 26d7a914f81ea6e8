"""How a recipe makes its photonic layers: one hardware, one mode, one
weight precision, and a core of its own for every layer (each op gets its
own converter ranges and its own planned channel spacing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flax import nnx

from lumijax import hardware as hw
from lumijax import layers, recurrent


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds photonic layers on a common hardware model.

    Attributes:
      hardware: the hardware every core simulates.
      mode: ``"ideal"``, ``"expected"`` or ``"noisy"``.
      weight_bits: bits of the ring weights.
    """

    hardware: hw.HardwareConfig = dataclasses.field(default_factory=hw.HardwareConfig)
    mode: layers.Mode = "ideal"
    weight_bits: int = 8

    def core(self, rngs: nnx.Rngs) -> layers.PhotonicCore:
        return layers.PhotonicCore(self.hardware, mode=self.mode, rngs=rngs)

    def linear(self, in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs) -> layers.OpticalLinear:
        return layers.OpticalLinear(
            in_features, out_features, use_bias=use_bias, weight_bits=self.weight_bits, core=self.core(rngs), rngs=rngs
        )

    def conv(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: int | Sequence[int],
        *,
        use_bias: bool,
        groups: int = 1,
        dilation: int | Sequence[int] = 1,
        rngs: nnx.Rngs,
    ) -> layers.OpticalConv:
        """A torch-style NHWC convolution: explicit symmetric zero padding of
        ``padding`` pixels (one for both axes, or ``(rows, columns)``)."""
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        return layers.OpticalConv(
            in_features, out_features, tuple(kernel_size) if not isinstance(kernel_size, int) else kernel_size,
            tuple(stride) if not isinstance(stride, int) else stride, padding=((ph, ph), (pw, pw)),
            use_bias=use_bias, groups=groups, dilation=tuple(dilation) if not isinstance(dilation, int) else dilation,
            weight_bits=self.weight_bits, core=self.core(rngs), rngs=rngs,
        )

    def conv_transpose(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        output_padding: Sequence[int],
        dilation: Sequence[int],
        *,
        use_bias: bool,
        groups: int = 1,
        rngs: nnx.Rngs,
    ) -> layers.OpticalConvTranspose:
        """A torch-style NHWC transposed convolution (``(rows, columns)``
        for each of the geometry's pairs)."""
        return layers.OpticalConvTranspose(
            in_features, out_features, tuple(kernel_size), tuple(stride), padding=tuple(padding),
            output_padding=tuple(output_padding), dilation=tuple(dilation), groups=groups, use_bias=use_bias,
            weight_bits=self.weight_bits, core=self.core(rngs), rngs=rngs,
        )

    def recurrent(self, cell: str, input_size: int, hidden_size: int, num_layers: int, *, bidirectional: bool,
                  use_bias: bool, rngs: nnx.Rngs) -> recurrent.OpticalRNN:
        """An LSTM or GRU whose banks are this factory's linear layers."""
        return recurrent.OpticalRNN(cell, input_size, hidden_size, num_layers, bidirectional=bidirectional,
                                    use_bias=use_bias, linear=self.linear, rngs=rngs)

    def tied_head(self, embedding: nnx.Embed, rngs: nnx.Rngs) -> layers.TiedOpticalLinear:
        return layers.TiedOpticalLinear(embedding, weight_bits=self.weight_bits, core=self.core(rngs), rngs=rngs)
