"""The convolution lowerings against lax.conv_general_dilated, and the
photonic convolution against the product on its explicit patch matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumijax import hardware as hw
from lumijax import layers
from lumijax.conv import Conv2D, ConvTranspose2D

# (N, H, W, C_in, C_out, kernel, strides, padding[, dilation]): odd sizes,
# strides 1 and 2, asymmetric padding, 1×1 and 7×7 kernels, images of 1 and
# 2 pixels, dilated (atrous) kernels.
CASES = [
    (2, 7, 5, 3, 4, (3, 3), (1, 1), "SAME"),
    (2, 9, 8, 3, 5, (3, 3), (2, 2), "SAME"),
    (1, 7, 9, 2, 3, (3, 2), (2, 1), ((1, 2), (0, 1))),
    (3, 5, 5, 4, 6, (1, 1), (1, 1), "VALID"),
    (2, 7, 7, 4, 3, (1, 1), (2, 2), ((0, 0), (0, 0))),
    (1, 11, 13, 3, 4, (7, 7), (2, 2), ((3, 3), (3, 3))),
    (2, 1, 1, 8, 5, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 2, 2, 6, 4, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (2, 2, 1, 5, 3, (3, 3), (1, 1), "SAME"),
    (2, 9, 8, 3, 4, (3, 3), (1, 1), "SAME", (2, 3)),
    (1, 11, 9, 2, 3, (3, 2), (2, 1), ((2, 1), (0, 2)), (2, 2)),
]


def reference(x, kernel, strides, padding, dilation=(1, 1)):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("lowering", ["patches", "native"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}x{c[2]}-k{c[5][0]}{c[5][1]}-s{c[6][0]}{c[6][1]}"
                                                    + (f"-d{c[8][0]}{c[8][1]}" if len(c) > 8 else ""))
def test_lowering_equals_conv_general_dilated(case, lowering):
    n, h, w, cin, cout, kernel_size, strides, padding, *dilation = case
    dilation = dilation[0] if dilation else (1, 1)
    kx, kk, kg = jax.random.split(jax.random.key(sum(case[:5])), 3)
    x = jax.random.normal(kx, (n, h, w, cin), jnp.float32)
    kernel = jax.random.normal(kk, (*kernel_size, cin, cout), jnp.float32)
    geometry = Conv2D(kernel_size, strides, padding, lowering=lowering, dilation=dilation)
    got = jax.jit(geometry)(x, kernel.reshape(-1, cout))
    want = reference(x, kernel, strides, padding, dilation)
    assert got.shape == want.shape == (n, *geometry.output_hw((h, w)), cout)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    cotangent = jax.random.normal(kg, want.shape, jnp.float32)
    mine = jax.jit(jax.grad(lambda x, k: jnp.sum(geometry(x, k.reshape(-1, cout)) * cotangent), argnums=(0, 1)))(x, kernel)
    theirs = jax.jit(jax.grad(lambda x, k: jnp.sum(reference(x, k, strides, padding, dilation) * cotangent),
                              argnums=(0, 1)))(x, kernel)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_patches_are_taps_in_row_major_order_with_channels_fastest():
    x = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
    geometry = Conv2D((2, 3), (2, 1), ((1, 0), (1, 1)))
    patches = np.asarray(geometry.patches(x))
    padded = np.pad(np.asarray(x), ((0, 0), (1, 0), (1, 1), (0, 0)))
    ho, wo = geometry.output_hw((4, 5))
    assert patches.shape == (2, ho, wo, 2 * 3 * 3)
    for i in range(ho):
        for j in range(wo):
            window = padded[:, 2 * i:2 * i + 2, j:j + 3, :]  # (N, kh, kw, C)
            np.testing.assert_array_equal(patches[:, i, j], window.reshape(2, -1))


def test_the_dac_sees_the_pixels_the_patches_read():
    """The DAC's range and sign come from the pixels the patch matrix reads:
    all of them, or (when a stride skips some) the tap slices."""
    x = jax.random.normal(jax.random.key(5), (2, 9, 8, 3))
    skipped = jnp.abs(x).at[:, 2::3].set(-50.0)  # rows a (2, 3) kernel of stride 3 never reads
    for geometry in (Conv2D(3, 2, 1), Conv2D(1, 2, 0), Conv2D((2, 3), (3, 1), ((0, 1), (1, 1))), Conv2D(3, 1, "VALID"),
                     Conv2D(2, 1, "VALID", dilation=3)):
        for image in (x, jnp.abs(x), skipped):
            patches = np.asarray(geometry.patches(image))
            parts = geometry.dac_inputs(image)
            assert max(float(np.abs(p).max()) for p in parts) == np.abs(patches).max()
            assert (min(float(np.min(p)) for p in parts) < 0) == (patches.min() < 0)
    assert Conv2D(3, 2, 1).reads_every_pixel((9, 8)) and not Conv2D(1, 2, 0).reads_every_pixel((9, 8))
    assert not Conv2D((2, 3), (3, 1), ((0, 1), (1, 1))).reads_every_pixel((9, 8))  # 2 rows of every 3
    assert not Conv2D(2, 3, "VALID", dilation=2).reads_every_pixel((9, 8))  # taps 0, 2, 3, 5, …


def test_the_choice_follows_exactness_and_size():
    geometry = Conv2D(3, 1, 1)
    assert geometry.lowering_for((64, 2, 2, 256)) == "native"
    assert geometry.lowering_for((64, 32, 32, 64)) == "native"
    assert Conv2D(3, 1, 1, lowering="patches").lowering_for((64, 32, 32, 64)) == "patches"
    # the hardware modes keep the patch product's sums while its matrix is small
    assert geometry.lowering_for((2, 24, 24, 8), exact=True) == "patches"
    assert geometry.lowering_for((64, 32, 32, 64), exact=True) == "native"  # a 38 M-element patch matrix


def test_bad_geometry_and_operands_raise():
    with pytest.raises(ValueError, match="padding"):
        Conv2D(3, 1, "CIRCULAR")
    with pytest.raises(ValueError, match="strides"):
        Conv2D(3, 0)
    with pytest.raises(ValueError, match="lowering"):
        Conv2D(3, lowering="winograd")
    with pytest.raises(ValueError, match="smaller than"):
        Conv2D(5, 1, "VALID").output_hw((3, 3))
    with pytest.raises(ValueError, match="NHWC"):
        Conv2D(3)(jnp.ones((4, 4, 3)), jnp.ones((27, 2)))
    with pytest.raises(ValueError, match=r"\(27, out\)"):
        Conv2D(3)(jnp.ones((1, 4, 4, 3)), jnp.ones((26, 2)))
    with pytest.raises(ValueError, match="smaller than"):
        Conv2D(3, 1, "VALID", dilation=2).output_hw((4, 9))  # a 5-pixel span
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2D(3, 2, output_padding=2)
    with pytest.raises(ValueError, match="no output pixels"):
        ConvTranspose2D(1, 1, padding=1).output_hw((2, 2))
    with pytest.raises(ValueError, match="overlap_add takes"):
        ConvTranspose2D(3).overlap_add(jnp.ones((1, 2, 2, 3, 2, 4)))


def patch_product(layer, x, mode, key=None):
    """The same convolution through the core's plain product on the patch
    matrix that XLA's own patch extraction builds (channels reordered to
    the layer's tap-major order)."""
    kh, kw, cin, cout = layer.conv.kernel[...].shape
    patches = jax.lax.conv_general_dilated_patches(x, (kh, kw), layer.strides, layer.geometry.pads(x.shape[1:3]),
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, _ = patches.shape
    patches = patches.reshape(n, ho, wo, cin, kh * kw).swapaxes(-1, -2).reshape(n, ho, wo, -1)
    kernel = layer.quantized_kernel(layer.conv.kernel[...].reshape(-1, cout))
    return layer.core.product(patches, kernel, key=key, slot_order=layer.slot_order) + layer.conv.bias[...]


@pytest.mark.parametrize("mode,lowering", [("expected", "patches"), ("noisy", "native")])
def test_the_photonic_conv_is_the_product_on_its_patches(mode, lowering):
    # 5 channels a tap on an 8-wavelength grid: tiles straddle the taps,
    # crosstalk couples them, a slot order permutes them, and the rings
    # drift, so the coupling is not undone by compensation.
    hardware = hw.HardwareConfig(num_channels=8, channel_spacing_nm=0.1, thermal_coupling=0.05, dac_bits=6, adc_bits=6)
    core = layers.PhotonicCore(hardware, mode=mode, drift_K=0.7, rngs=nnx.Rngs(0, noise=3))
    layer = layers.OpticalConv(5, 4, 3, 2, padding=((1, 0), (2, 1)), weight_bits=5, core=core, rngs=nnx.Rngs(1))
    layer.geometry = Conv2D(3, 2, ((1, 0), (2, 1)), lowering=lowering)
    layer.set_slot_order(np.random.default_rng(0).permutation(45))
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (3, 7, 6, 5)))
    key = jax.random.key(9)
    got = layer.core.product(x, layer.quantized_kernel(layer._kernel_matrix()), key=key, lowering=layer.geometry,
                             slot_order=layer.slot_order) + layer.conv.bias[...]
    if mode == "expected":
        np.testing.assert_allclose(got, layer(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, patch_product(layer, x, mode, key), rtol=1e-4, atol=1e-4)
    # and the gradients of the loss reach the weights and the scales alike
    cotangent = jax.random.normal(jax.random.key(3), got.shape)

    def loss(layer, use_patches):
        y = patch_product(layer, x, mode, key) if use_patches else layer.core.product(
            x, layer.quantized_kernel(layer._kernel_matrix()), key=key, lowering=layer.geometry,
            slot_order=layer.slot_order) + layer.conv.bias[...]
        return jnp.sum(y * cotangent)

    wrt = nnx.DiffState(0, nnx.Param)
    direct = nnx.jit(nnx.grad(lambda l: loss(l, False), argnums=wrt))(layer)
    patched = nnx.jit(nnx.grad(lambda l: loss(l, True), argnums=wrt))(layer)
    for (path, a), (_, b) in zip(nnx.to_flat_state(direct), nnx.to_flat_state(patched)):
        np.testing.assert_allclose(a.get_value(), b.get_value(), rtol=2e-3, atol=2e-3, err_msg=str(path))
