"""The native kernels on numpy arrays and torch tensors.

C-contiguous numpy arrays and CPU torch tensors are read in place (torch
tensors through ``Tensor.numpy()``, which shares their memory); other
layouts are made contiguous first. The torch functions are
``torch.autograd.Function``s with torch's gradient convention for complex
tensors (``dA = dC·Bᴴ``, ``dB = Aᴴ·dC``), computed by the same GEMM with
adjoint operands, so nothing is conjugated or transposed in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lumijax import native

if TYPE_CHECKING:
    import torch

IDENTITY, TRANSPOSE, ADJOINT = 0, 1, 2


def _contiguous(x: np.ndarray) -> np.ndarray:
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def matmul_numpy(a: np.ndarray, b: np.ndarray, op_a: int = IDENTITY, op_b: int = IDENTITY) -> np.ndarray:
    """``op(a) @ op(b)`` for float32, float64, complex64 or complex128 arrays.

    ``op`` is identity (0), transpose (1) or conjugate transpose (2) of the
    last two axes; batch axes broadcast as in ``numpy.matmul``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        raise TypeError(f"matmul_numpy needs one dtype, got {a.dtype} and {b.dtype}")
    return native.load().matmul(_contiguous(a), _contiguous(b), op_a, op_b)


def causal_softmax_numpy(x: np.ndarray, scale: float, offset: int = 0) -> np.ndarray:
    """Fused ``softmax(scale·x + causal mask)`` over the last axis (float32)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"causal_softmax_numpy takes float32, got {x.dtype}")
    return native.load().causal_softmax(_contiguous(x), float(scale), int(offset))


def _torch():
    import torch

    return torch


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.device.type != "cpu":
        raise ValueError(f"the native kernels run on CPU tensors, got a tensor on {t.device}")
    return t.detach().resolve_conj().numpy()


def _matmul_tensors(a: torch.Tensor, b: torch.Tensor, op_a: int, op_b: int) -> torch.Tensor:
    return _torch().from_numpy(matmul_numpy(_to_numpy(a), _to_numpy(b), op_a, op_b))


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sums ``grad`` over the batch axes broadcast to reach it."""
    lead = grad.dim() - len(shape)
    if lead:
        grad = grad.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, size in enumerate(shape[:-2]) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dim=axes, keepdim=True) if axes else grad


def _complex_matmul_function():
    torch = _torch()

    class ComplexMatmul(torch.autograd.Function):
        """``a @ b`` on the native GEMM, differentiable in torch."""

        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return _matmul_tensors(a, b, IDENTITY, IDENTITY)

        @staticmethod
        def backward(ctx, grad):
            a, b = ctx.saved_tensors
            grad_a = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_a = _sum_to(_matmul_tensors(grad, b, IDENTITY, ADJOINT), a.shape)
            if ctx.needs_input_grad[1]:
                grad_b = _sum_to(_matmul_tensors(a, grad, ADJOINT, IDENTITY), b.shape)
            return grad_a, grad_b

    return ComplexMatmul


def _causal_softmax_function():
    torch = _torch()

    class CausalSoftmax(torch.autograd.Function):
        """Fused causal softmax, differentiable in torch."""

        @staticmethod
        def forward(ctx, x, scale, offset):
            p = torch.from_numpy(causal_softmax_numpy(_to_numpy(x), scale, offset))
            ctx.save_for_backward(p)
            ctx.scale, ctx.offset = scale, offset
            return p

        @staticmethod
        def backward(ctx, grad):
            (p,) = ctx.saved_tensors
            dx = native.load().causal_softmax_backward(
                _contiguous(_to_numpy(p)), _contiguous(_to_numpy(grad)), float(ctx.scale), int(ctx.offset)
            )
            return torch.from_numpy(dx), None, None

    return CausalSoftmax


_FUNCTIONS: dict[str, type] = {}


def _function(name: str, build) -> type:
    if name not in _FUNCTIONS:
        _FUNCTIONS[name] = build()
    return _FUNCTIONS[name]


def complex_matmul_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for CPU tensors (float32/64, complex64/128), with autograd."""
    if a.dtype != b.dtype:
        raise TypeError(f"complex_matmul_torch needs one dtype, got {a.dtype} and {b.dtype}")
    return _function("matmul", _complex_matmul_function).apply(a, b)


def causal_softmax_torch(x: torch.Tensor, scale: float, offset: int = 0) -> torch.Tensor:
    """Fused causal softmax of a float32 CPU tensor ``(…, T, S)``, with autograd."""
    if x.dtype != _torch().float32:
        raise TypeError(f"causal_softmax_torch takes float32, got {x.dtype}")
    return _function("softmax", _causal_softmax_function).apply(x, float(scale), int(offset))
