"""The kernels on numpy arrays and torch tensors."""

import numpy as np
import pytest

from lumijax import interop

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(3)


def sample(shape, dtype):
    x = RNG.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * RNG.standard_normal(shape)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("op_a,op_b", [(0, 0), (1, 0), (0, 2), (2, 1)])
def test_numpy_matmul_against_numpy(dtype, op_a, op_b):
    ops = {0: lambda x: x, 1: lambda x: x.swapaxes(-1, -2), 2: lambda x: x.conj().swapaxes(-1, -2)}
    a, b = sample((3, 7, 5), dtype), sample((1, 5, 4) if op_b == 0 else (1, 4, 5), dtype)
    if op_a:
        a = a.swapaxes(-1, -2).copy()
    got = interop.matmul_numpy(a, b, op_a, op_b)
    want = ops[op_a](a.astype(np.complex128)) @ ops[op_b](b.astype(np.complex128))
    assert got.dtype == dtype and got.shape == (3, 7, 4)
    tol = 1e-12 if dtype in (np.float64, np.complex128) else 1e-4
    np.testing.assert_allclose(got, want, atol=tol * 10)


def test_numpy_matmul_non_contiguous_and_errors():
    a = sample((9, 6), np.complex64)[::2]  # strided rows
    b = sample((4, 6), np.complex64).T  # Fortran order
    np.testing.assert_allclose(interop.matmul_numpy(a, b), a @ b, atol=1e-4)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        interop.matmul_numpy(sample((2, 3), np.float32), sample((4, 2), np.float32))
    with pytest.raises(TypeError, match="one dtype"):
        interop.matmul_numpy(sample((2, 3), np.float32), sample((3, 2), np.float64))
    with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
        interop.matmul_numpy(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="rank ≥ 2"):
        interop.matmul_numpy(np.ones(3, np.float32), np.ones((3, 1), np.float32))


def test_numpy_softmax_matches_the_masked_formula():
    x = sample((2, 3, 6, 9), np.float32)
    got = interop.causal_softmax_numpy(x, 0.5, 3)
    mask = np.arange(9)[None, :] > np.arange(6)[:, None] + 3
    z = np.where(mask, -np.inf, 0.5 * x.astype(np.float64))
    want = np.exp(z - z.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float32])
def test_torch_matmul_forward_and_gradients_match_torch(dtype):
    a = torch.randn(2, 5, 4, dtype=dtype, requires_grad=True)
    b = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    target = torch.randn(2, 5, 3, dtype=dtype)
    mine = interop.complex_matmul_torch(a, b)
    loss = (mine - target).abs().pow(2).sum()
    grads = torch.autograd.grad(loss, (a, b))
    ref = torch.matmul(a, b)
    ref_grads = torch.autograd.grad((ref - target).abs().pow(2).sum(), (a, b))
    tol = 1e-4 if dtype != torch.complex128 else 1e-10
    torch.testing.assert_close(mine, ref, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=tol, rtol=tol)


def test_torch_gradcheck_complex128():
    a = torch.randn(3, 4, dtype=torch.complex128, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(interop.complex_matmul_torch, (a, b))


def test_torch_softmax_matches_masked_fill_softmax_with_gradients():
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
    weights = torch.randn(2, 3, 7, 7)
    mine = interop.causal_softmax_torch(x, 0.3)
    ref = torch.softmax((x * 0.3).masked_fill(mask, float("-inf")), dim=-1)
    torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    (g,) = torch.autograd.grad((mine * weights).sum(), x)
    (r,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_torch_tensor_memory_is_shared_not_copied():
    a = torch.randn(8, 8, dtype=torch.complex64)
    view = a.numpy()
    assert view.ctypes.data == a.data_ptr()  # the path the kernels read through
    with pytest.raises(TypeError, match="float32"):
        interop.causal_softmax_torch(torch.ones(2, 2, dtype=torch.float64), 1.0)
