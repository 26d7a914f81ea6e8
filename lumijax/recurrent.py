"""Recurrent layers (LSTM, GRU) with their gate products on the photonic core.

At every time step a layer of an LSTM or a GRU multiplies two vectors by a
weight bank: the input ``x_t`` by ``W_ih`` and the previous hidden state
``h_{t−1}`` by ``W_hh``, each giving all the gates' pre-activations (LSTM
``i, f, g, o``: ``4H`` rows; GRU ``r, z, n``: ``3H`` rows). Both banks are
:class:`~lumijax.layers.OpticalLinear` layers on cores of their own, with
their own converters; the input product covers all time steps at once, the
recurrent one runs once per step (``h_t`` depends on it). The gate
nonlinearities and the cell update are electronic. The equations, gate order
and biases are torch's (``nn.LSTM``, ``nn.GRU``)::

    LSTM  i, f, g, o = σ, σ, tanh, σ (W_ih x_t + b_ih + W_hh h + b_hh)
          c_t = f ⊙ c + i ⊙ g,   h_t = o ⊙ tanh(c_t)
    GRU   r, z = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          n = tanh(W_in x_t + b_in + r ⊙ (W_hn h + b_hn))
          h_t = (1 − z) ⊙ n + z ⊙ h

The time loop is unrolled at trace time (the sequence length is static), so
each step's products pass the converters like any other product, and
``observe=True`` updates their ranges step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lumijax import layers

Array = jax.Array
Cell = Literal["lstm", "gru"]
#: Gates of each cell, in torch's row order of ``W_ih`` and ``W_hh``.
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


class Direction(nnx.Module):
    """One layer in one direction: the input bank ``W_ih`` ``(in, G·H)``
    and the recurrent bank ``W_hh`` ``(H, G·H)`` (``G`` gates), each an
    :class:`~lumijax.layers.OpticalLinear` (``kernel`` the transposed torch
    weight, ``bias`` torch's ``b_ih``, ``b_hh``)."""

    def __init__(self, input_bank: layers.OpticalLinear, hidden_bank: layers.OpticalLinear):
        self.input = input_bank
        self.hidden = hidden_bank


class OpticalRNN(nnx.Module):
    """A multi-layer LSTM or GRU (torch's ``nn.LSTM`` / ``nn.GRU`` without
    ``proj_size``), its gate products on the core.

    Layers are ``l0``, ``l0_reverse``, ``l1``, … (:class:`Direction`), as
    torch names their weights (``weight_ih_l0_reverse``).

    Args:
      cell: ``"lstm"`` or ``"gru"``.
      input_size, hidden_size: features of ``x_t`` and ``h_t``.
      num_layers: stacked layers; each takes the previous one's outputs
        (both directions concatenated).
      bidirectional: a second direction per layer runs from the last step.
      use_bias: whether the banks carry ``b_ih`` and ``b_hh``.
      linear: makes a bank, called as ``linear(in_features, out_features,
        use_bias=…, rngs=…)``; default :class:`~lumijax.layers.OpticalLinear`
        (each on a default core of its own).
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        use_bias: bool = True,
        linear: Callable[..., layers.OpticalLinear] | None = None,
        rngs: nnx.Rngs,
    ):
        if cell not in GATES:
            raise ValueError(f"cell = {cell!r}: use one of {tuple(GATES)}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers = {num_layers!r} must be an integer ≥ 1")
        linear = linear or layers.OpticalLinear
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.directions = 2 if bidirectional else 1
        rows = len(GATES[cell]) * hidden_size
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size * self.directions
            for name in self._names(layer):
                setattr(self, name, Direction(linear(fan_in, rows, use_bias=use_bias, rngs=rngs),
                                              linear(hidden_size, rows, use_bias=use_bias, rngs=rngs)))

    def _names(self, layer: int) -> list[str]:
        return [f"l{layer}", f"l{layer}_reverse"][: self.directions]

    def __call__(self, x: Array, state: tuple[Array, ...] | None = None, *, observe: bool = False) -> tuple[Array, tuple[Array, ...]]:
        """Runs the sequence ``x`` ``(T, N, in)``.

        Args:
          state: the initial ``(h_0,)`` (GRU) or ``(h_0, c_0)`` (LSTM), each
            ``(num_layers·directions, N, H)``; default zeros.

        Returns:
          The last layer's outputs ``(T, N, directions·H)`` and the final
          state, shaped as ``state``.
        """
        if x.ndim != 3:
            raise ValueError(f"an RNN takes a sequence (T, N, features), got shape {x.shape}")
        length, batch, _ = x.shape
        slots = self.num_layers * self.directions
        parts = 2 if self.cell == "lstm" else 1
        if state is None:
            state = tuple(jnp.zeros((slots, batch, self.hidden_size), x.dtype) for _ in range(parts))
        if len(state) != parts or any(s.shape != (slots, batch, self.hidden_size) for s in state):
            raise ValueError(f"an {self.cell.upper()} takes {parts} initial state(s) of shape "
                             f"{(slots, batch, self.hidden_size)}, got {[tuple(s.shape) for s in state]}")
        final: list[list[Array]] = [[] for _ in range(parts)]
        for layer in range(self.num_layers):
            outputs = []
            for d, name in enumerate(self._names(layer)):
                slot = layer * self.directions + d
                ys, last = self._run(getattr(self, name), x, tuple(s[slot] for s in state), reverse=d == 1, observe=observe)
                outputs.append(ys)
                for i, value in enumerate(last):
                    final[i].append(value)
            x = jnp.concatenate(outputs, axis=-1) if self.directions == 2 else outputs[0]
        return x, tuple(jnp.stack(values) for values in final)

    def _run(self, direction: Direction, x: Array, carry: tuple[Array, ...], *, reverse: bool,
             observe: bool) -> tuple[Array, tuple[Array, ...]]:
        """One direction over the sequence: outputs ``(T, N, H)`` in time
        order, and its final ``(h,)`` or ``(h, c)``."""
        inputs = direction.input(x, observe=observe)  # all time steps, one product
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        outputs: dict[int, Array] = {}
        for t in steps:
            recurrent = direction.hidden(carry[0], observe=observe)
            carry = self._update(inputs[t], recurrent, carry)
            outputs[t] = carry[0]
        return jnp.stack([outputs[t] for t in range(x.shape[0])]), carry

    def _update(self, inputs: Array, recurrent: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
        """The cell's electronic update from the two products' gate
        pre-activations ``(N, G·H)``."""
        if self.cell == "lstm":
            i, f, g, o = jnp.split(inputs + recurrent, 4, axis=-1)
            c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
            return jax.nn.sigmoid(o) * jnp.tanh(c), c
        (x_r, x_z, x_n), (h_r, h_z, h_n) = jnp.split(inputs, 3, axis=-1), jnp.split(recurrent, 3, axis=-1)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        return ((1 - z) * n + z * carry[0],)
